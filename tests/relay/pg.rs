//! A private PostgreSQL server for one test: `initdb` in the test's temporary directory, a free port on loopback, a
//! socket directory of its own, stopped when the test ends, whether it passes or fails. `initdb` refuses to run as
//! root, so under root the server runs as `nobody`. Without PostgreSQL's binaries the tests say so and pass, unless
//! `CI` is set (`.ci/run` installs Debian's `postgresql`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::relay::{data_dir, TestDir};

pub struct Postgres {
    dir: TestDir,
    bin: PathBuf,
    port: u16,
    /// `Some("nobody")` when the tests run as root.
    user: Option<&'static str>,
}

/// The directory of PostgreSQL's server programs: Debian keeps them under /usr/lib/postgresql/VERSION/bin.
fn binaries() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| Some(entry.ok()?.path().join("bin")))
        .filter(|bin| bin.join("initdb").is_file() && bin.join("pg_ctl").is_file())
        .collect();
    found.sort();
    found.pop()
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("bound").port()
}

impl Postgres {
    /// Starts a server for test `name`; `None` (after saying why) where PostgreSQL is not installed and `CI` is
    /// not set.
    pub fn start(name: &str) -> Option<Postgres> {
        let Some(bin) = binaries() else {
            assert!(std::env::var_os("CI").is_none(), "CI is set but PostgreSQL's binaries are missing");
            eprintln!(
                "NOTICE: the PostgreSQL tests did not run: no /usr/lib/postgresql/*/bin (apt-get install postgresql)"
            );
            return None;
        };
        let dir = data_dir(&format!("pg-{name}"));
        let user = is_root().then_some("nobody");
        let pg = Postgres { port: free_port(), dir, bin, user };
        std::fs::create_dir_all(pg.socket_dir()).expect("a socket directory");
        if user.is_some() {
            // The server's user must reach its directories: the test directory is root's and private.
            Command::new("chmod").arg("755").arg(&*pg.dir).status().expect("chmod");
            Command::new("chown").args(["-R", "nobody"]).arg(&*pg.dir).status().expect("chown");
        }
        let init = pg.run("initdb", &["-D", &pg.data(), "-U", "engine", "-A", "trust", "-E", "UTF8", "--no-sync"]);
        assert!(init.status.success(), "initdb failed: {}", String::from_utf8_lossy(&init.stderr));
        pg.up();
        Some(pg)
    }

    fn data(&self) -> String {
        self.dir.join("pgdata").display().to_string()
    }

    fn socket_dir(&self) -> PathBuf {
        self.dir.join("socket")
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        let path = self.bin.join(program);
        let mut command = match self.user {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(&path);
                command
            }
            None => Command::new(&path),
        };
        command.args(args).current_dir(Path::new("/")).stdin(Stdio::null()).output().expect("a PostgreSQL program runs")
    }

    /// Starts the server and waits until it takes connections.
    pub fn up(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200 -c shared_buffers=32MB",
            self.port,
            self.socket_dir().display()
        );
        let log = self.dir.join("server.log").display().to_string();
        let started = self.run("pg_ctl", &["-D", &self.data(), "-l", &log, "-w", "-t", "60", "-o", &options, "start"]);
        assert!(
            started.status.success(),
            "the PostgreSQL server did not start: {}{}",
            String::from_utf8_lossy(&started.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Stops the server at once, as a crash or a lost machine would (`immediate`: no checkpoint).
    pub fn down(&self) {
        let _ = self.run("pg_ctl", &["-D", &self.data(), "-m", "immediate", "-w", "stop"]);
    }

    /// A fresh database on this server, for one relay fleet; its URL.
    pub fn database(&self, name: &str) -> String {
        let psql = self.run(
            "psql",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "engine",
                "-d",
                "postgres",
                "-c",
                &format!("CREATE DATABASE {name}"),
            ],
        );
        assert!(psql.status.success(), "CREATE DATABASE {name}: {}", String::from_utf8_lossy(&psql.stderr));
        format!("postgres://engine@127.0.0.1:{}/{name}", self.port)
    }

    /// One SQL statement's output, unaligned, for checks on what the relays wrote.
    pub fn query(&self, url: &str, sql: &str) -> String {
        let out = self.run("psql", &["-X", "-A", "-t", "-d", url, "-c", sql]);
        assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Postgres {
    /// Every row of the relay's tables as text: what a look at the database would find.
    pub fn dump(&self, url: &str) -> String {
        let tables = ["engine_queue", "engine_dead", "engine_identity", "engine_settings", "engine_holds"];
        let sql = tables.iter().map(|t| format!("SELECT t::text FROM {t} t")).collect::<Vec<_>>().join(" UNION ALL ");
        self.query(url, &sql)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.down();
    }
}

/// One server for the whole test process, for running the relay suite on PostgreSQL (`ENGINE_TEST_STORE=postgres`):
/// started on first use, stopped and removed when the process exits.
pub fn shared() -> Option<&'static Postgres> {
    static SHARED: std::sync::OnceLock<Option<Postgres>> = std::sync::OnceLock::new();
    SHARED
        .get_or_init(|| {
            let server = Postgres::start("shared")?;
            // A static is never dropped, so the server's directory (some hundred megabytes once the suite has
            // made its databases) is removed here too.
            extern "C" fn stop_at_exit() {
                if let Some(Some(server)) = SHARED.get() {
                    server.down();
                    let _ = std::fs::remove_dir_all(&*server.dir);
                }
            }
            extern "C" {
                fn atexit(callback: extern "C" fn()) -> i32;
            }
            // SAFETY: registering a plain function with the C library's atexit, which the test harness's process
            // exit runs; the function only runs pg_ctl.
            unsafe { atexit(stop_at_exit) };
            Some(server)
        })
        .as_ref()
}

/// A fresh database on the shared server for the relay suite's test `dir`, when the suite runs on PostgreSQL.
pub fn suite_database(dir: &Path) -> Option<String> {
    if std::env::var("ENGINE_TEST_STORE").ok().as_deref() != Some("postgres") {
        return None;
    }
    // A relay restarted on the same directory finds the same database, as it would find the same redb file.
    static MADE: std::sync::Mutex<Vec<(std::path::PathBuf, String)>> = std::sync::Mutex::new(Vec::new());
    let mut made = MADE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, url)) = made.iter().find(|(d, _)| d == dir) {
        return Some(url.clone());
    }
    let server = shared().expect("ENGINE_TEST_STORE=postgres needs PostgreSQL's binaries");
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name: String = dir
        .file_name()
        .map(|f| f.to_string_lossy().to_lowercase())
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(40)
        .collect();
    let url = server.database(&format!("t{n}_{name}"));
    made.push((dir.to_path_buf(), url.clone()));
    Some(url)
}
