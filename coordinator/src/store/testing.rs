//! A private PostgreSQL cluster for tests: created in a temporary directory with Debian's
//! `initdb`, run by the test process itself as an unprivileged user (PostgreSQL refuses root:
//! as root the cluster belongs to `nobody`, entered with `setpriv`), listening only on a unix
//! socket in that directory (no TCP port to clash with), with password (SCRAM) logins so the
//! store's password handling is exercised. One cluster per test process, one fresh database per
//! test.
//!
//! The server is the child of a thread that lives as long as the process and is started with
//! `setpriv --pdeathsig INT`, so it shuts down (fast) when the test process ends, however it
//! ends; the next run deletes data directories left by processes that no longer exist.
//!
//! Whether PostgreSQL tests run: always when PostgreSQL is installed. When it is not, they say
//! they are skipped — unless `PITCREW_POSTGRES_TESTS=1` (CI sets it), which makes a missing
//! or broken PostgreSQL a failure.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::PostgresSettings;

/// The environment variable that makes PostgreSQL tests mandatory.
pub const REQUIRE_ENV: &str = "PITCREW_POSTGRES_TESTS";
/// The role the tests log in as (the cluster's superuser).
pub const USER: &str = "pitcrew";
/// The cluster's port (only its unix socket's name: nothing listens on TCP).
const PORT: u16 = 5432;
/// How long the cluster may take to accept connections.
const READY_DEADLINE: Duration = Duration::from_secs(90);

/// A running test cluster.
#[derive(Debug)]
pub struct TestCluster {
    /// Holds the data directory and the socket.
    pub dir: PathBuf,
    password: String,
    bin: PathBuf,
    next_db: AtomicU32,
}

static CLUSTER: OnceLock<Result<TestCluster, String>> = OnceLock::new();

/// The process's test cluster, started on first use. `None` (after saying so on stderr) when
/// PostgreSQL is not installed and not required; panics when it is required or installed but
/// cannot start, naming why.
pub fn cluster() -> Option<&'static TestCluster> {
    let required = std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1");
    let Some(bin) = find_binaries() else {
        if required {
            panic!(
                "{REQUIRE_ENV}=1 but PostgreSQL's initdb and postgres are not installed (apt-get install postgresql)"
            );
        }
        eprintln!(
            "skipped: PostgreSQL is not installed (apt-get install postgresql; {REQUIRE_ENV}=1 makes this a failure)"
        );
        return None;
    };
    match CLUSTER.get_or_init(|| start(&bin)) {
        Ok(cluster) => Some(cluster),
        Err(error) => panic!("cannot start the test PostgreSQL cluster: {error}"),
    }
}

/// `initdb` and `postgres`: on the PATH, else Debian's newest `/usr/lib/postgresql/N/bin`.
fn find_binaries() -> Option<PathBuf> {
    let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has_both(&dir) {
                return Some(dir);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, bin)| has_both(bin))
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// The uid and gid of `nobody`, from /etc/passwd.
fn nobody() -> Result<(u32, u32), String> {
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(|e| format!("/etc/passwd: {e}"))?;
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.first() == Some(&"nobody") && fields.len() > 3)
                .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
                .flatten()
        })
        .ok_or_else(|| "no user nobody in /etc/passwd to run PostgreSQL as".to_owned())
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// A command run as the cluster's owner: `nobody` when we are root, ourselves otherwise.
fn as_owner(program: &Path, owner: Option<(u32, u32)>, pdeathsig: bool) -> Command {
    let mut command = Command::new("setpriv");
    if let Some((uid, gid)) = owner {
        command.args([
            format!("--reuid={uid}"),
            format!("--regid={gid}"),
            "--clear-groups".into(),
        ]);
    }
    if pdeathsig {
        command.arg("--pdeathsig=INT");
    }
    command.arg("--").arg(program);
    command
}

/// Deletes data directories of earlier test processes that are gone.
fn remove_stale(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("pitcrew-pg-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next() else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn start(bin: &Path) -> Result<TestCluster, String> {
    let tmp = std::env::temp_dir();
    remove_stale(&tmp);
    let unique = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = tmp.join(format!("pitcrew-pg-{}-{unique}", std::process::id()));
    std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let owner = if is_root() { Some(nobody()?) } else { None };
    let password = format!("test-{}", uuid::Uuid::new_v4().simple());
    let pwfile = dir.join("pwfile");
    std::fs::write(&pwfile, format!("{password}\n")).map_err(|e| e.to_string())?;
    if let Some((uid, gid)) = owner {
        for path in [&dir, &pwfile] {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .map_err(|e| format!("chown {}: {e}", path.display()))?;
        }
    }
    let data = dir.join("data");
    let initdb = as_owner(&bin.join("initdb"), owner, false)
        .arg("-D")
        .arg(&data)
        .args(["-U", USER, "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"])
        .arg(format!("--pwfile={}", pwfile.display()))
        .args(["--auth-local=scram-sha-256", "--auth-host=scram-sha-256"])
        .output()
        .map_err(|e| format!("cannot run initdb: {e}"))?;
    if !initdb.status.success() {
        return Err(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&initdb.stderr)
        ));
    }
    let _ = std::fs::remove_file(&pwfile);
    let log = dir.join("postgres.log");
    let log_file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
    let mut server = as_owner(&bin.join("postgres"), owner, true);
    server
        .arg("-D")
        .arg(&data)
        .arg("-k")
        .arg(&dir)
        .args(["-p", &PORT.to_string()])
        // Unix socket only; the tests' durability is not PostgreSQL's fsync.
        .args(["-c", "listen_addresses=", "-c", "fsync=off"])
        .args(["-c", "max_connections=300"])
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().map_err(|e| e.to_string())?)
        .stderr(log_file);
    // The server is the child of a thread that lives as long as the process: the parent-death
    // signal is sent when that thread ends, so it must never end before the process does.
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("pitcrew-test-postgres".into())
        .spawn(move || match server.spawn() {
            Ok(mut child) => {
                let _ = started_tx.send(Ok(child.id()));
                let status = child.wait();
                eprintln!("the test PostgreSQL cluster exited: {status:?}");
            }
            Err(e) => {
                let _ = started_tx.send(Err(format!("cannot start postgres: {e}")));
            }
        })
        .map_err(|e| e.to_string())?;
    started_rx
        .recv()
        .map_err(|_| "the postgres keeper thread died".to_owned())??;
    // Ready when it accepts connections; the deadline is generous for a loaded machine.
    let deadline = Instant::now() + READY_DEADLINE;
    let isready = bin.join("pg_isready");
    loop {
        let ready = Command::new(if isready.is_file() {
            isready.as_path()
        } else {
            Path::new("pg_isready")
        })
        .arg("-h")
        .arg(&dir)
        .args(["-p", &PORT.to_string(), "-U", USER, "-d", "postgres", "-q"])
        .status()
        .map_err(|e| format!("cannot run pg_isready: {e}"))?;
        if ready.success() {
            break;
        }
        if Instant::now() > deadline {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(format!(
                "not accepting connections after {READY_DEADLINE:?}; its log:\n{tail}"
            ));
        }
        // pg_isready answers at once; this only paces the polling.
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(TestCluster {
        dir,
        password,
        bin: bin.to_owned(),
        next_db: AtomicU32::new(0),
    })
}

impl TestCluster {
    /// The URL of a database of this cluster, without the password (the socket directory as
    /// a percent-encoded host).
    /// The unix socket the cluster listens on (a test may put a proxy in front of it).
    pub fn socket(&self) -> PathBuf {
        self.dir.join(format!(".s.PGSQL.{PORT}"))
    }

    pub fn url(&self, database: &str) -> String {
        let host: String = self
            .dir
            .to_string_lossy()
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        format!("postgres://{USER}@{host}:{PORT}/{database}")
    }

    /// The password of [`USER`].
    pub fn password(&self) -> &str {
        &self.password
    }

    /// Where `psql` and friends are.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// A fresh, empty database; returns its name.
    pub fn create_database(&self) -> String {
        let name = format!(
            "t{}_{}",
            std::process::id(),
            self.next_db.fetch_add(1, Ordering::SeqCst)
        );
        self.sql("postgres", &format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("cannot create a test database: {e}"));
        name
    }

    /// Settings for a fresh, empty database.
    pub fn new_database(&self) -> PostgresSettings {
        let name = self.create_database();
        self.settings(&name)
    }

    /// Settings for an existing database.
    pub fn settings(&self, database: &str) -> PostgresSettings {
        PostgresSettings::new(&self.url(database), Some(self.password.clone()))
            .unwrap_or_else(|e| panic!("the test cluster's URL: {e}"))
    }

    /// Runs SQL statements on a database with `psql` (for what tests do behind the store's
    /// back: killing connections, damaging data).
    pub fn sql(&self, database: &str, statements: &str) -> Result<String, String> {
        let psql = self.bin.join("psql");
        let output = Command::new(if psql.is_file() {
            psql.as_path()
        } else {
            Path::new("psql")
        })
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .arg("-h")
        .arg(&self.dir)
        .args([
            "-p",
            &PORT.to_string(),
            "-U",
            USER,
            "-d",
            database,
            "-c",
            statements,
        ])
        .env("PGPASSWORD", &self.password)
        .output()
        .map_err(|e| format!("cannot run psql: {e}"))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }
}
