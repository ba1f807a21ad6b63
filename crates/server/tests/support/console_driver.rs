//! Runs tests/support/console.mjs (puppeteer-core driving headless Chromium) and talks to it:
//! it prints one JSON step per line, and reads commands from its standard input.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The most one step may take (the page's own waits are shorter); only keeps a hang from
/// stalling the run.
const STEP_GUARD: Duration = Duration::from_secs(180);

/// The repository's `console/` directory.
pub fn console_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../console").canonicalize().expect("console/ in the repository")
}

/// The Chromium puppeteer starts.
pub fn chromium_path() -> PathBuf {
    PathBuf::from(std::env::var_os("CHROMIUM").unwrap_or_else(|| "/usr/bin/chromium".into()))
}

/// Fails loudly when node, Chromium or ffmpeg are missing.
pub fn require_console_tools() {
    crate::common::require("ffmpeg");
    let node = Command::new("node").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    assert!(
        node.is_ok_and(|s| s.success()),
        "node is required for the console test: run ./scripts/test (it installs npm)"
    );
    assert!(
        chromium_path().exists(),
        "{} is required for the console test: run ./scripts/test (it installs Debian's chromium)",
        chromium_path().display()
    );
}

/// The node script and the browser it started, in their own process group (killed whole when
/// dropped, so no Chromium outlives a failed test).
pub struct Driver {
    child: Child,
    stdin: ChildStdin,
    steps: mpsc::Receiver<serde_json::Value>,
}

impl Driver {
    /// Starts `console.mjs MODE URL PATH` with puppeteer-core from `console_dir`.
    pub fn start(mode: &str, url: &str, path: &str, console_dir: &Path) -> Driver {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support/console.mjs");
        let mut child = Command::new("node")
            .arg(script)
            .args([mode, url, path])
            .env("CONSOLE_DIR", console_dir)
            .env("CHROMIUM", chromium_path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .expect("start node");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, steps) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<serde_json::Value>(&line) {
                    Ok(v) => {
                        if tx.send(v).is_err() {
                            break;
                        }
                    }
                    Err(_) => eprintln!("console.mjs: {line}"),
                }
            }
        });
        Driver { child, stdin, steps }
    }

    /// The next step, which must be `step`; panics on an error step or another one.
    pub fn expect(&mut self, step: &str) -> serde_json::Value {
        let v = tokio::task::block_in_place(|| self.steps.recv_timeout(STEP_GUARD))
            .unwrap_or_else(|e| panic!("console.mjs sent no {step:?} step: {e} (exit: {:?})", self.child.try_wait()));
        eprintln!("console.mjs: {v}");
        if v["step"] == "error" {
            panic!("console.mjs failed before {step:?}: {}", v["message"].as_str().unwrap_or_default());
        }
        assert_eq!(v["step"], step, "unexpected step from console.mjs: {v}");
        v
    }

    /// Sends one command line.
    pub fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("write to console.mjs");
        self.stdin.flush().unwrap();
    }

    /// Waits for the script to exit successfully (after its `done`).
    pub fn finish(mut self) {
        let status = tokio::task::block_in_place(|| self.child.wait()).unwrap();
        assert!(status.success(), "console.mjs exited with {status}");
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The whole group: node and the Chromium it started.
        let pgid = self.child.id();
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{pgid}")]).stderr(Stdio::null()).status();
        let _ = self.child.wait();
    }
}
