//! Store URLs: which backend, where; and the password hidden for every message.

use std::path::PathBuf;

use super::StoreError;

/// A parsed store URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `sqlite:///abs/path.db` (absolute) or `sqlite://rel/path.db` (relative to the working
    /// directory).
    Sqlite(PathBuf),
    /// `postgresql://` or `postgres://`, kept whole for the driver.
    Postgres(String),
    /// `memory://`: this process only, gone when it exits.
    Memory,
    /// `journal:///abs/folder` or `journal://rel/folder`: a folder (on a shared filesystem)
    /// holding an operation log and saved states.
    Journal(PathBuf),
}

/// One URL of each kind a user would write, for messages.
const EXAMPLES: &str =
    "sqlite:///path/study.db, journal:///shared/folder or postgresql://user@host/db";

impl StoreUrl {
    pub fn parse(url: &str) -> Result<StoreUrl, StoreError> {
        let bad = |message: String| StoreError::Backend {
            url: hide_password(url),
            message,
        };
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(bad(format!("not a store URL: expected {EXAMPLES}")));
        };
        match scheme {
            "sqlite" => {
                if rest.is_empty() {
                    return Err(bad("no file: expected sqlite:///path/study.db".into()));
                }
                Ok(StoreUrl::Sqlite(PathBuf::from(rest)))
            }
            "journal" => {
                if rest.is_empty() {
                    return Err(bad("no folder: expected journal:///shared/folder".into()));
                }
                Ok(StoreUrl::Journal(PathBuf::from(rest)))
            }
            "postgresql" | "postgres" => Ok(StoreUrl::Postgres(url.to_string())),
            "memory" => Ok(StoreUrl::Memory),
            other => Err(bad(format!(
                "unknown scheme \"{other}\": expected sqlite, journal, postgresql or memory"
            ))),
        }
    }
}

/// `url` with the password of its user part replaced by `***`.
pub fn hide_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (auth_end, _) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let Some(at) = auth_end.rfind('@') else {
        return url.to_string();
    };
    let user = &auth_end[..at];
    match user.split_once(':') {
        Some((name, _)) => format!("{scheme}://{name}:***{}", &rest[at..]),
        None => url.to_string(),
    }
}

/// This machine's host name, for lease owners ("unknown" where it cannot be read).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden_and_everything_else_kept() {
        assert_eq!(
            hide_password("postgresql://bob:s3cret@db.example:5432/hpo"),
            "postgresql://bob:***@db.example:5432/hpo"
        );
        assert_eq!(
            hide_password("postgresql://bob@db/hpo"),
            "postgresql://bob@db/hpo"
        );
        assert_eq!(
            hide_password("sqlite:///tmp/a@b.db"),
            "sqlite:///tmp/a@b.db"
        );
    }

    #[test]
    fn schemes_parse_and_unknown_ones_are_named() {
        assert_eq!(
            StoreUrl::parse("sqlite:///tmp/x.db").unwrap(),
            StoreUrl::Sqlite("/tmp/x.db".into())
        );
        assert_eq!(
            StoreUrl::parse("sqlite://runs/x.db").unwrap(),
            StoreUrl::Sqlite("runs/x.db".into())
        );
        assert!(matches!(
            StoreUrl::parse("postgres://u@h/d").unwrap(),
            StoreUrl::Postgres(_)
        ));
        assert_eq!(
            StoreUrl::parse("journal:///shared/hpo").unwrap(),
            StoreUrl::Journal("/shared/hpo".into())
        );
        assert_eq!(
            StoreUrl::parse("journal://runs/hpo").unwrap(),
            StoreUrl::Journal("runs/hpo".into())
        );
        let e = StoreUrl::parse("journal://").unwrap_err().to_string();
        assert!(e.contains("no folder") && e.contains("journal://"), "{e}");
        let e = StoreUrl::parse("mysql://u:pw@h/d").unwrap_err().to_string();
        assert!(
            e.contains("unknown scheme \"mysql\"") && e.contains("journal") && !e.contains("pw"),
            "{e}"
        );
    }
}
