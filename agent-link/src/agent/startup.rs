//! Startup scripts: the executable files in the system directory, run as the agent's
//! own user (root in a space), then those in the space user's directory, run as that
//! user; each directory in name order, one script after another. Their output goes to
//! the agent's log, line by line. A script that fails is reported and the next runs.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tracing::{debug, info, info_span, warn, Instrument};

use super::account::{effective_uid, lookup, Account};
use super::config::AgentConfig;

/// Longest line logged as one; longer ones are split, so that a script cannot make the
/// agent hold unbounded output.
const MAX_LINE: u64 = 4096;

/// After a script exits, how long its remaining output may take before the verdict is
/// logged. A background process the script started can hold its pipes open for ever;
/// that output keeps being logged after the verdict.
const OUTPUT_GRACE: Duration = Duration::from_millis(500);

/// The agent token lets whoever holds it register this space: scripts do not get it.
const SECRET_ENV: &str = "KNOT_AGENT_TOKEN";

/// Where the scripts are, and whose the user directory is.
#[derive(Debug, Clone)]
pub(super) struct StartupScripts {
    system_dir: PathBuf,
    user_dir: PathBuf,
    user: Option<String>,
}

/// Whom a user script runs as.
#[derive(Debug)]
struct AsUser {
    account: Account,
    /// Whether to switch to the account's ids: the agent is root. Otherwise the agent
    /// already is that user.
    switch: bool,
}

impl StartupScripts {
    pub(super) fn new(config: &AgentConfig) -> Self {
        Self {
            system_dir: config.system_startup_dir.clone(),
            user_dir: config.user_startup_dir.clone(),
            user: config.user.clone(),
        }
    }

    /// Runs the system scripts, then the user's.
    pub(super) async fn run(self) {
        for script in scripts_in(&self.system_dir) {
            run_script(&script, None).await;
        }
        self.run_user_scripts().await;
        info!("startup scripts done");
    }

    async fn run_user_scripts(&self) {
        let Some(name) = &self.user else {
            return debug!("no space user (KNOT_USER): no user startup scripts");
        };
        let account = match lookup(name).await {
            Ok(account) => account,
            Err(e) => return warn!(user = %name, error = %e, "user startup scripts skipped"),
        };
        let scripts = scripts_in(&in_home(&self.user_dir, &account.home));
        if scripts.is_empty() {
            return;
        }
        let Some(as_user) = permitted(account) else {
            return;
        };
        for script in scripts {
            run_script(&script, Some(&as_user)).await;
        }
    }
}

/// How the agent can run scripts as `account`, if it can at all: as root it switches
/// ids; as that same user it runs them as itself; as anyone else it cannot.
fn permitted(account: Account) -> Option<AsUser> {
    let own = match effective_uid() {
        Ok(uid) => uid,
        Err(e) => {
            warn!(error = %e, "user startup scripts skipped");
            return None;
        }
    };
    if own != 0 && own != account.uid {
        warn!(
            user = %account.name, agent_uid = own,
            "the agent is neither root nor the space's user, so it cannot run the user's \
             startup scripts as that user; skipped"
        );
        return None;
    }
    Some(AsUser {
        switch: own == 0,
        account,
    })
}

/// `dir` with a leading `~` replaced by `home`.
fn in_home(dir: &Path, home: &Path) -> PathBuf {
    match dir.strip_prefix("~") {
        Ok(rest) => home.join(rest),
        Err(_) => dir.to_owned(),
    }
}

/// The scripts in `dir`: executable regular files (symbolic links followed), in byte
/// order of their names. A missing directory is ordinary and holds no scripts.
fn scripts_in(dir: &Path) -> Vec<PathBuf> {
    // A handful of directory entries at start: not worth a blocking-pool thread.
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            debug!(dir = %dir.display(), "no startup script directory");
            return Vec::new();
        }
        Err(e) => {
            warn!(dir = %dir.display(), error = %e, "cannot read the startup script directory");
            return Vec::new();
        }
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    paths.sort();
    paths.retain(|path| is_executable_file(path));
    paths
}

fn is_executable_file(path: &Path) -> bool {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o111 != 0 => true,
        Ok(_) => {
            debug!(path = %path.display(), "not an executable file; skipped");
            false
        }
        Err(e) => {
            debug!(path = %path.display(), error = %e, "cannot inspect; skipped");
            false
        }
    }
}

/// Runs one script to its end, logging its output and how it ended. Never fails: a
/// broken script must not keep the space from starting.
async fn run_script(path: &Path, as_user: Option<&AsUser>) {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let user = as_user.map(|u| u.account.name.as_str());
    let span = info_span!("startup_script", script = %name, user);
    async {
        info!(path = %path.display(), "running startup script");
        let mut child = match tokio::process::Command::from(command(path, as_user)).spawn() {
            Ok(child) => child,
            Err(e) => return warn!(error = %e, "startup script cannot start"),
        };
        let out = tokio::spawn(log_output(child.stdout.take(), "stdout").in_current_span());
        let err = tokio::spawn(log_output(child.stderr.take(), "stderr").in_current_span());
        let status = child.wait().await;
        let _ = tokio::time::timeout(OUTPUT_GRACE, async { tokio::join!(out, err) }).await;
        match status {
            Ok(status) if status.success() => info!("startup script finished"),
            Ok(status) => warn!(%status, "startup script failed"),
            Err(e) => warn!(error = %e, "cannot wait for startup script"),
        }
    }
    .instrument(span)
    .await
}

/// The command for one script: no input, output piped to the log, no agent token, and
/// for a user script that user's ids, home and name.
fn command(path: &Path, as_user: Option<&AsUser>) -> std::process::Command {
    let mut cmd = std::process::Command::new(path);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove(SECRET_ENV)
        .current_dir("/");
    let Some(AsUser { account, switch }) = as_user else {
        return cmd;
    };
    cmd.env("HOME", &account.home)
        .env("USER", &account.name)
        .env("LOGNAME", &account.name);
    // A home that does not exist (`nobody`'s) would make the spawn fail.
    if account.home.is_dir() {
        cmd.current_dir(&account.home);
    }
    if *switch {
        // std drops the supplementary groups when it changes the uid. Setting the
        // user's own groups needs the unstable `CommandExt::groups`; until then a user
        // script does not have the user's secondary groups (such as `docker`).
        cmd.uid(account.uid).gid(account.gid);
    }
    cmd
}

/// Logs each line of a script's output, until the pipe closes.
async fn log_output(pipe: Option<impl AsyncRead + Unpin>, stream: &'static str) {
    let Some(pipe) = pipe else { return };
    let mut reader = BufReader::new(pipe);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) => return,
            Ok(_) => info!(stream, "{}", String::from_utf8_lossy(&line).trim_end()),
            Err(e) => return debug!(error = %e, stream, "cannot read script output"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// A directory removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new() -> Self {
            static N: AtomicU32 = AtomicU32::new(0);
            let name = format!(
                "agent-startup-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            );
            let path = std::env::temp_dir().join(name);
            std::fs::create_dir_all(&path).unwrap();
            Self(path)
        }

        fn dir(&self, name: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::create_dir_all(&path).unwrap();
            path
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn write(dir: &Path, name: &str, mode: u32, body: &str) {
        let path = dir.join(name);
        std::fs::write(&path, body).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn names(paths: &[PathBuf]) -> Vec<String> {
        let name = |p: &PathBuf| p.file_name().unwrap().to_string_lossy().into_owned();
        paths.iter().map(name).collect()
    }

    #[test]
    fn scripts_are_executable_files_in_name_order() {
        let scratch = Scratch::new();
        let dir = scratch.dir("scripts");
        write(&dir, "20-b", 0o755, "#!/bin/sh\n");
        write(&dir, "10-a", 0o700, "#!/bin/sh\n");
        write(&dir, "15-not-executable", 0o644, "#!/bin/sh\n");
        write(&dir, "3-group-only", 0o710, "#!/bin/sh\n");
        std::fs::create_dir(dir.join("12-a-directory")).unwrap();
        assert_eq!(names(&scripts_in(&dir)), ["10-a", "20-b", "3-group-only"]);
    }

    #[test]
    fn a_missing_directory_holds_no_scripts() {
        assert!(scripts_in(Path::new("/nonexistent/knot-startup.d")).is_empty());
    }

    #[test]
    fn a_leading_tilde_is_the_users_home() {
        let home = Path::new("/home/alice");
        let expand = |dir: &str| in_home(Path::new(dir), home);
        assert_eq!(expand("~/.knot-startup.d"), home.join(".knot-startup.d"));
        assert_eq!(expand("/etc/x"), PathBuf::from("/etc/x"));
        assert_eq!(expand("~bob/x"), PathBuf::from("~bob/x"));
    }

    /// Guards against a failing script stopping the ones after it, and against user
    /// scripts running before the system ones or without the user's HOME.
    #[tokio::test]
    async fn system_scripts_then_user_scripts_each_in_order_past_failures() {
        let scratch = Scratch::new();
        let (system, user) = (scratch.dir("system"), scratch.dir("user"));
        let log = scratch.0.join("ran");
        let append = |what: &str| format!("#!/bin/sh\necho \"{what}\" >> {}\n", log.display());
        write(&system, "20-second", 0o755, &append("second"));
        write(&system, "10-first", 0o755, &append("first"));
        write(&system, "15-skipped", 0o644, &append("skipped"));
        write(&system, "30-fails", 0o755, "#!/bin/sh\nexit 3\n");
        write(&system, "40-after", 0o755, &append("after"));
        write(&user, "10-user", 0o755, &append("user $HOME"));
        let me = std::process::Command::new("id")
            .arg("-un")
            .output()
            .unwrap();
        let me = String::from_utf8(me.stdout).unwrap().trim().to_owned();
        let home = lookup(&me).await.unwrap().home;

        let scripts = StartupScripts {
            system_dir: system,
            user_dir: user,
            user: Some(me),
        };
        scripts.run().await;

        let ran = std::fs::read_to_string(&log).unwrap();
        let want = format!("first\nsecond\nafter\nuser {}\n", home.display());
        assert_eq!(ran, want);
    }
}
