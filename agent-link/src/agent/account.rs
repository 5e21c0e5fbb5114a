//! The space user's account, from the passwd database, and the agent's own user id:
//! what the startup scripts need to run user scripts as that user.
//!
//! Both come from outside the process (`getent`, `/proc`) because this workspace
//! forbids `unsafe`, and so the libc calls that would answer directly.

use std::path::PathBuf;

/// A user as the passwd database knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Account {
    pub(super) name: String,
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) home: PathBuf,
    pub(super) shell: String,
}

/// The account could not be looked up.
#[derive(Debug, thiserror::Error)]
pub(super) enum AccountError {
    /// `getent` could not run.
    #[error("cannot run getent: {0}")]
    Getent(std::io::Error),
    /// `getent` knows no such user (it exits with 2).
    #[error("no user {0:?} in the passwd database")]
    Unknown(String),
    /// The passwd line is not `name:pw:uid:gid:gecos:home:shell`.
    #[error("cannot read the passwd entry {0:?}")]
    Malformed(String),
    /// Our own user id could not be read.
    #[error("cannot read the agent's user id from /proc/self/status: {0}")]
    OwnUid(String),
}

/// Looks `name` up with `getent passwd`, which sees every source the system's NSS
/// configuration names (files, LDAP, ...), not only `/etc/passwd`.
pub(super) async fn lookup(name: &str) -> Result<Account, AccountError> {
    let out = tokio::process::Command::new("getent")
        .args(["passwd", "--", name])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(AccountError::Getent)?;
    if !out.status.success() {
        return Err(AccountError::Unknown(name.to_owned()));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next().unwrap_or_default();
    parse_passwd(line).ok_or_else(|| AccountError::Malformed(line.to_owned()))
}

/// One line of passwd(5).
fn parse_passwd(line: &str) -> Option<Account> {
    let fields: Vec<&str> = line.trim_end().split(':').collect();
    let [name, _pw, uid, gid, _gecos, home, shell] = fields[..] else {
        return None;
    };
    Some(Account {
        name: name.to_owned(),
        uid: uid.parse().ok()?,
        gid: gid.parse().ok()?,
        home: PathBuf::from(home),
        shell: shell.to_owned(),
    })
}

/// The agent's effective user id.
pub(super) fn effective_uid() -> Result<u32, AccountError> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| AccountError::OwnUid(e.to_string()))?;
    effective_uid_in(&status).ok_or_else(|| AccountError::OwnUid("no Uid line".into()))
}

/// The second number of the `Uid:` line (real, effective, saved, filesystem).
fn effective_uid_in(status: &str) -> Option<u32> {
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_lines_parse_and_malformed_ones_do_not() {
        let a = parse_passwd("alice:x:1000:1000:Alice,,,:/home/alice:/bin/bash\n").unwrap();
        assert_eq!((a.uid, a.gid), (1000, 1000));
        assert_eq!(a.home, PathBuf::from("/home/alice"));
        assert_eq!(a.shell, "/bin/bash");
        assert_eq!(parse_passwd("alice:x:1000:1000:/home/alice"), None);
        assert_eq!(parse_passwd("alice:x:one:1000::/home/alice:/bin/sh"), None);
    }

    #[test]
    fn the_effective_uid_is_the_second_field() {
        let status = "Name:\tagent\nUid:\t1000\t0\t0\t0\nGid:\t5\t5\t5\t5\n";
        assert_eq!(effective_uid_in(status), Some(0));
        assert!(effective_uid().is_ok());
    }

    #[tokio::test]
    async fn root_is_in_the_passwd_database() {
        let root = lookup("root").await.unwrap();
        assert_eq!(root.uid, 0);
        assert!(matches!(
            lookup("no-such-user-knot-test").await,
            Err(AccountError::Unknown(_))
        ));
    }
}
