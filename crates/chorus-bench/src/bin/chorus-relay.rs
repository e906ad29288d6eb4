//! `chorus-relay`: the bare WebSocket relay that `chorus bench --protocol relay` drives,
//! the floor ("physical limit") chorus and its peers are compared with. See
//! `chorus_bench::serve_relay` for what it does.

use clap::Parser;
use std::net::SocketAddr;

/// A bare tokio-tungstenite WebSocket relay: clients join rooms, every message to a room
/// is written to each member.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:19700")]
    listen: SocketAddr,
    /// Read and write buffer of each WebSocket, bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 1024)]
    buffer: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let socket = match args.listen {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(args.listen)?;
    let listener = socket.listen(4096)?;
    eprintln!("chorus-relay on ws://{}", listener.local_addr()?);
    chorus_bench::serve_relay(listener, args.buffer).await?;
    Ok(())
}
