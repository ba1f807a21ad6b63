//! Helpers of the push and CDN tests: Debian's nginx run in the foreground with a private
//! prefix and port (as an RTMP server with libnginx-mod-rtmp, or as a caching HTTP proxy),
//! free ports, and the push status API.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{Proc, Server, http_get, probe};

/// Fails loudly when nginx (or its RTMP module) is missing: these tests never skip.
pub fn require_nginx(rtmp: bool) {
    let ok = Command::new("nginx").arg("-v").stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    assert!(ok, "nginx is required: run ./scripts/test (it installs nginx and libnginx-mod-rtmp)");
    if rtmp {
        assert!(
            Path::new(RTMP_MODULE).exists(),
            "{RTMP_MODULE} is required: run ./scripts/test (it installs libnginx-mod-rtmp)"
        );
    }
}

const RTMP_MODULE: &str = "/usr/lib/nginx/modules/ngx_rtmp_module.so";

/// nginx in the foreground (one process: no master) with its own prefix directory.
pub struct Nginx {
    pub proc: Option<Proc>,
    pub dir: PathBuf,
    pub port: u16,
}

impl Nginx {
    /// nginx-rtmp with `application live { live on; }` on `port`.
    pub fn rtmp(dir: &Path, port: u16) -> Nginx {
        require_nginx(true);
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\nload_module {RTMP_MODULE};\n\
             error_log stderr warn;\npid nginx.pid;\nevents {{ worker_connections 256; }}\n\
             rtmp {{ server {{ listen 127.0.0.1:{port}; chunk_size 4096; application live {{ live on; }} }} }}\n"
        );
        Nginx::start(dir, port, &conf)
    }

    /// nginx with a whole configuration of its own in `dir`.
    pub fn start(dir: &Path, port: u16, conf: &str) -> Nginx {
        require_nginx(false);
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let mut n = Nginx { proc: None, dir: dir.to_owned(), port };
        n.restart();
        n
    }

    /// (Re)starts the process on the same port and configuration.
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new("nginx")
            .arg("-p")
            .arg(&self.dir)
            .arg("-c")
            .arg(self.dir.join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start nginx");
        self.proc = Some(Proc(child));
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nginx never listened on {}", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the process.
    pub fn stop(&mut self) {
        self.proc = None;
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.proc.as_ref().expect("running").0.id()
    }

    /// Sends a signal (`STOP`, `CONT`) to the process.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").arg(format!("-{sig}")).arg(self.pid().to_string()).status().unwrap().success();
        assert!(ok, "kill -{sig}");
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if self.proc.is_some() {
            // A stopped process must run to die of SIGKILL's cleanup promptly.
            let _ = Command::new("kill").arg("-CONT").arg(self.pid().to_string()).status();
        }
    }
}

/// A fresh directory for a test's own files.
pub fn test_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ferrocast-push-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The push status of `path` (`GET /api/v1/push/PATH`): its `push` list.
pub async fn push_status(server: &Server, path: &str) -> Vec<Value> {
    status_at(server.http, path).await
}

/// [`push_status`] of the server whose HTTP address is `http`.
pub async fn status_at(http: std::net::SocketAddr, path: &str) -> Vec<Value> {
    let r = http_get(&format!("http://{http}/api/v1/paths/{path}"), "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    v["push"].as_array().cloned().unwrap_or_default()
}

/// Waits until target `i` of `path` satisfies `pred`; panics with the last status after 60 s.
pub async fn wait_status(server: &Server, path: &str, i: usize, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = push_status(server, path).await;
        if let Some(t) = s.get(i)
            && pred(t)
        {
            return t.clone();
        }
        assert!(Instant::now() < deadline, "push {i} of {path} never {what}: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `url` (RTMP) has a stream ffprobe can open: the push reached the target.
pub fn wait_readable(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = probe(url, 1);
        if p.codec("video").is_some() {
            return;
        }
        assert!(Instant::now() < deadline, "{url} never readable: {}", p.stderr);
        std::thread::sleep(Duration::from_millis(300));
    }
}
