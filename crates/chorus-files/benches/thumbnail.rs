//! Thumbnails of a 12-megapixel picture (4000×3000, what a phone camera takes): the
//! time of [`chorus_files::thumbnail::make`] (decode with limits, shrink to 320×240,
//! encode) for a JPEG (quality 90) and for a PNG of the same pixels, and of the
//! decode alone.
//!
//! `cargo bench -p chorus-files --bench thumbnail` (figures in BENCHMARKS.md);
//! `RUNS=N` for another number of timed runs (default 7, after one warm-up).
//!
//! The picture is made here, not read from a file: smooth gradients and waves with
//! a little noise on top, so that the decoders work as on a photograph (a flat colour
//! would decode in a fraction of the time; pure noise would make an unrealistically
//! large file).

use chorus_files::thumbnail;
use image::codecs::jpeg::JpegEncoder;
use image::{DynamicImage, ImageBuffer, ImageFormat, Rgb};
use std::io::Cursor;
use std::time::{Duration, Instant};

const WIDTH: u32 = 4000;
const HEIGHT: u32 = 3000;

fn main() {
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7)
        .max(1);
    let picture = picture();
    let jpeg = {
        let mut out = Cursor::new(Vec::new());
        picture
            .write_with_encoder(JpegEncoder::new_with_quality(&mut out, 90))
            .unwrap();
        out.into_inner()
    };
    let png = {
        let mut out = Cursor::new(Vec::new());
        picture.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    };
    println!("12 MP picture ({WIDTH}x{HEIGHT}), {runs} runs after one warm-up; thumbnail::make");
    for (label, bytes) in [("JPEG q90", &jpeg), ("PNG", &png)] {
        let mut thumb = None;
        let times = time(runs, || thumb = Some(thumbnail::make(bytes).unwrap()));
        let thumb = thumb.unwrap();
        let made = image::load_from_memory(&thumb.bytes).unwrap();
        println!(
            "{label:>8}: {:.2} MiB in, thumbnail::make min {} ms, median {} ms, max {} ms -> {}x{} {} of {} KiB",
            bytes.len() as f64 / (1024.0 * 1024.0),
            ms(times[0]),
            ms(median(&times)),
            ms(times[times.len() - 1]),
            made.width(),
            made.height(),
            thumb.content_type,
            thumb.bytes.len() / 1024,
        );
        // Where the time goes: the decode alone (no limits, same decoder).
        let times = time(runs, || {
            std::hint::black_box(image::load_from_memory(bytes).unwrap());
        });
        println!(
            "{label:>8}: of which decoding alone: min {} ms, median {} ms, max {} ms",
            ms(times[0]),
            ms(median(&times)),
            ms(times[times.len() - 1]),
        );
    }
}

/// The sorted times of `runs` calls of `f`, after one untimed.
fn time(runs: usize, mut f: impl FnMut()) -> Vec<Duration> {
    f();
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        f();
        times.push(start.elapsed());
    }
    times.sort();
    times
}

fn median(sorted: &[Duration]) -> Duration {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// Gradients across the frame, waves of a few sizes, and ±8 levels of noise (a
/// xorshift, so that every run encodes the same bytes).
fn picture() -> DynamicImage {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut noise = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % 17) as f32 - 8.0
    };
    let image = ImageBuffer::from_fn(WIDTH, HEIGHT, |x, y| {
        let (fx, fy) = (x as f32 / WIDTH as f32, y as f32 / HEIGHT as f32);
        let wave = (x as f32 / 37.0).sin() * (y as f32 / 23.0).cos() * 30.0
            + ((x + y) as f32 / 211.0).sin() * 40.0;
        let channel = |base: f32, n: f32| (base + wave + n).clamp(0.0, 255.0) as u8;
        Rgb([
            channel(40.0 + 180.0 * fx, noise()),
            channel(60.0 + 150.0 * fy, noise()),
            channel(200.0 - 150.0 * fx * fy, noise()),
        ])
    });
    DynamicImage::ImageRgb8(image)
}
