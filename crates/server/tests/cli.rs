//! The binary's command line: defaults, config errors, env vars and graceful shutdown.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferrocast::config::Config;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferrocast"))
}

#[test]
fn print_default_config_is_the_defaults() {
    let out = bin().arg("--print-default-config").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(Config::parse(&text).unwrap(), Config::default());
}

#[test]
fn bad_config_file_names_the_key() {
    let path = std::env::temp_dir().join(format!("ferrocast-bad-{}.toml", std::process::id()));
    std::fs::write(&path, "[hub]\nrepublish_grace = 5\n").unwrap();
    let out = bin().arg("--config").arg(&path).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("republish_grace"), "{err}");
}

#[test]
fn env_vars_set_listeners_and_sigterm_shuts_down() {
    let mut child = bin()
        .env("FERROCAST_RTMP_ADDR", "127.0.0.1:0")
        .env("FERROCAST_HTTP_ADDR", "127.0.0.1:0")
        .env("FERROCAST_RTSP_ADDR", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.starts_with("ferrocast: rtmp listening on 127.0.0.1:"), "{first}");
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let start = Instant::now();
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("ferrocast did not exit on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "exit status {exit:?}");
}
