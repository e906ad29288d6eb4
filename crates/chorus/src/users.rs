//! `chorus users …`: accounts as the database holds them, without a running server.
//! Administrators are named by user id (`jobs.admins`), so an operator needs a way to
//! find the id of an account: `chorus users show NAME` prints it. A server that takes
//! sign-ups by invite only needs a first invite before anyone can sign up: `chorus
//! users invite` makes one.
//!
//! The database is found as `chorus serve` finds it (`--db`, else `chorus.db` in
//! `--data-dir`); a configuration file is not read, so that one naming administrators
//! the old way (by username, which the server now refuses) does not stand in the way
//! of the command that fixes it.

use chorus_gateway::accounts;
use clap::{Args, Subcommand};
use std::io::Write;
use std::path::PathBuf;

/// `chorus users …`.
#[derive(Debug, Args)]
pub struct UsersArgs {
    /// Directory of the embedded database [default: ./chorus-data].
    #[arg(long, env = "CHORUS_DATA_DIR", value_name = "DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Database URL: sqlite://PATH or postgres://USER@HOST/DB
    /// [default: sqlite://<data-dir>/chorus.db].
    #[arg(long, env = "CHORUS_DB", value_name = "URL", global = true)]
    pub db: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: UsersCommand,
}

/// The account tools.
#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Print the id of the user USERNAME: what `jobs.admins` and `CHORUS_ADMINS` take.
    Show {
        /// The exact username (case matters).
        username: String,
    },
    /// List users by name, one `ID USERNAME` line each.
    List {
        /// Only names starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: i64,
    },
    /// Make a single-use invite (for `auth.registration = "invite"`) and print
    /// `CODE EXPIRES_AT`.
    Invite {
        /// How long it stays valid, seconds.
        #[arg(long, value_name = "SECS", default_value_t = 7 * 24 * 3600)]
        ttl_secs: u64,
    },
}

impl UsersArgs {
    /// The database URL, as `chorus serve` would open it.
    fn db_url(&self) -> anyhow::Result<String> {
        let config = chorus_config::Config {
            data_dir: self
                .data_dir
                .clone()
                .unwrap_or_else(|| "./chorus-data".into()),
            db: self.db.clone(),
            ..Default::default()
        };
        let url = config.db_url();
        // Opening a SQLite URL creates the file: a mistyped path would list no users
        // instead of saying it is wrong.
        if let Some(path) = url.strip_prefix("sqlite://") {
            let path = path.split('?').next().unwrap_or(path);
            if !std::path::Path::new(path).exists() {
                anyhow::bail!(
                    "no database at {path}: give the server's --data-dir or --db (or CHORUS_DATA_DIR, CHORUS_DB)"
                );
            }
        }
        Ok(url)
    }

    /// Runs the command, writing what it prints to `output`.
    pub async fn run(&self, output: &mut dyn Write) -> anyhow::Result<()> {
        let store = crate::backends::store(&self.db_url()?, false).await?;
        match &self.command {
            UsersCommand::Show { username } => {
                let account = store
                    .account(username)
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("no user is named {username:?}"))?;
                writeln!(output, "{}", account.user.id)?;
            }
            UsersCommand::List { prefix, limit } => {
                for user in store.search_users(prefix, *limit).await? {
                    writeln!(output, "{} {}", user.id, user.username)?;
                }
            }
            UsersCommand::Invite { ttl_secs } => {
                let code = accounts::new_invite_code();
                let ttl = std::time::Duration::from_secs(*ttl_secs);
                let expires_at = accounts::expiry(chrono::Utc::now(), ttl);
                store.create_invite(&code, None, expires_at).await?;
                writeln!(
                    output,
                    "{code} {}",
                    expires_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_store::{InviteStore, Store};

    fn args(data_dir: &std::path::Path, command: UsersCommand) -> UsersArgs {
        UsersArgs {
            data_dir: Some(data_dir.to_owned()),
            db: None,
            command,
        }
    }

    async fn run(args: &UsersArgs) -> anyhow::Result<String> {
        let mut out = Vec::new();
        args.run(&mut out).await?;
        Ok(String::from_utf8(out).unwrap())
    }

    #[tokio::test]
    async fn show_prints_the_id_of_a_user_and_list_prints_them_all() {
        let dir = tempfile::tempdir().unwrap();
        let store = chorus_store::sqlite::SqliteStore::open(&dir.path().join("chorus.db"))
            .await
            .unwrap();
        let ada = store.create_user("ada", "hash").await.unwrap();
        let bob = store.create_user("bob", "hash").await.unwrap();
        drop(store);

        let show = |name: &str| {
            args(
                dir.path(),
                UsersCommand::Show {
                    username: name.into(),
                },
            )
        };
        assert_eq!(run(&show("ada")).await.unwrap(), format!("{}\n", ada.id));
        let e = run(&show("Ada")).await.unwrap_err().to_string();
        assert!(e.contains("no user is named \"Ada\""), "{e}");
        let list = args(
            dir.path(),
            UsersCommand::List {
                prefix: String::new(),
                limit: 10,
            },
        );
        assert_eq!(
            run(&list).await.unwrap(),
            format!("{} ada\n{} bob\n", ada.id, bob.id)
        );
    }

    #[tokio::test]
    async fn invite_prints_a_usable_code_and_its_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chorus.db");
        let store = chorus_store::sqlite::SqliteStore::open(&path)
            .await
            .unwrap();
        let invite = args(dir.path(), UsersCommand::Invite { ttl_secs: 3600 });
        let printed = run(&invite).await.unwrap();
        let (code, expires) = printed.trim_end().split_once(' ').unwrap();
        let expires: chrono::DateTime<chrono::Utc> = expires.parse().unwrap();
        let hour = chrono::Duration::hours(1);
        assert!((expires - chrono::Utc::now() - hour).num_seconds().abs() < 60);
        assert!(store.invite_usable(code, chrono::Utc::now()).await.unwrap());
        assert!(!store.invite_usable(code, expires).await.unwrap());
    }

    #[tokio::test]
    async fn a_data_directory_without_a_database_is_an_error_not_an_empty_list() {
        let dir = tempfile::tempdir().unwrap();
        let list = args(
            dir.path(),
            UsersCommand::List {
                prefix: String::new(),
                limit: 10,
            },
        );
        let e = run(&list).await.unwrap_err().to_string();
        assert!(e.contains("no database at"), "{e}");
        assert!(!dir.path().join("chorus.db").exists());
    }
}
