//! The replication recipes of docs/streaming.md ("Replication"), run as written:
//! - over a pipe (in place of ssh): a full state, then two deltas, each streamed by one
//!   e2image-rs into another (`-Q … - | e2image-rs -r - REPLICA`, `-x a..b … - | e2image-rs
//!   apply - REPLICA`); the replica ends byte-identical to the last state;
//! - through object storage with the standard S3 client, against a real S3-compatible server
//!   on 127.0.0.1 (`moto_server`, the Python package `moto[server]`, with `awscli`), started
//!   on a free port and stopped after: the same three steps through `aws s3 cp - s3://…` and
//!   `aws s3 cp s3://… -`.

use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// An archive of the chain's three states a, b, c, with file data.
fn archive(dir: &Path) -> PathBuf {
    let imgs = chain(dir);
    let q = dir.join("arch.qcow2");
    expect(&[&"-Q", &"-d", &"--name", &"a", &imgs[0], &q], 0);
    expect(
        &[&"-Q", &"-d", &"--append", &"--name", &"b", &imgs[1], &q],
        0,
    );
    expect(
        &[&"-Q", &"-d", &"--append", &"--name", &"c", &imgs[2], &q],
        0,
    );
    q
}

/// Runs `script` with `sh -e -o pipefail`, `E2IMAGE_RS` naming the binary; asserts success.
fn shell(script: &str, env: &[(&str, String)]) {
    let mut c = Command::new("bash");
    c.args(["-e", "-o", "pipefail", "-c", script])
        .env("E2IMAGE_RS", bin());
    for (k, v) in env {
        c.env(k, v);
    }
    let o = c.output().unwrap();
    assert!(o.status.success(), "{script}\n{}", stderr(&o));
}

/// The replica must equal state `c` of the archive, byte for byte.
fn assert_replica_is_c(q: &Path, replica: &Path, dir: &Path) {
    let want = dir.join("want-c.raw");
    expect(&[&"-r", &"--from-snapshot", &"c", &q, &want], 0);
    assert_eq!(sha256(replica), sha256(&want), "{}", replica.display());
}

#[test]
fn a_replica_over_a_pipe_ends_as_the_last_state() {
    if skip() {
        return;
    }
    let dir = scratch("repl-pipe");
    let q = archive(&dir);
    let r = dir.join("replica.img");
    let (qs, rs) = (q.display().to_string(), r.display().to_string());
    let p = |n: &str| dir.join(n).display().to_string();
    shell(
        &format!(r#""$E2IMAGE_RS" -Q -d --from-snapshot a {qs} - | "$E2IMAGE_RS" -r - {rs}"#),
        &[],
    );
    for (x, patch) in [("a..b", p("p1")), ("b..c", p("p2"))] {
        shell(
            &format!(
                r#""$E2IMAGE_RS" -Q -d -x {x} {qs} - | "$E2IMAGE_RS" apply - {rs} --patch {patch}"#
            ),
            &[],
        );
    }
    assert_replica_is_c(&q, &r, &dir);
}

/// A moto S3 server on 127.0.0.1, stopped on drop.
struct S3 {
    child: Child,
    endpoint: String,
}

impl S3 {
    /// Starts `moto_server` on a free port and waits until it answers.
    fn start() -> S3 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Owned by the guard at once: its drop kills and waits for the
        // server on every path, the panic below included.
        let server = S3 {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("moto_server did not start on port {port}");
    }

    /// The environment of `aws` against this server.
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_DEFAULT_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
        ]
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_replica_through_object_storage_ends_as_the_last_state() {
    if skip() || !require(&["moto_server", "aws"]) {
        return;
    }
    let dir = scratch("repl-s3");
    let q = archive(&dir);
    let s3 = S3::start();
    let env = s3.env();
    shell("aws s3 mb s3://replicas", &env);
    let (qs, r) = (q.display().to_string(), dir.join("replica.img"));
    let rs = r.display().to_string();
    // The sending site: a full state, then the deltas, each straight into a bucket.
    shell(
        &format!(
            r#""$E2IMAGE_RS" -Q -d --from-snapshot a {qs} - | aws s3 cp - s3://replicas/home/a.qcow2"#
        ),
        &env,
    );
    for x in ["a..b", "b..c"] {
        shell(
            &format!(
                r#""$E2IMAGE_RS" -Q -d -x {x} {qs} - | aws s3 cp - s3://replicas/home/{x}.qcow2"#
            ),
            &env,
        );
    }
    // The replica's site: straight out of the bucket.
    shell(
        &format!(r#"aws s3 cp s3://replicas/home/a.qcow2 - | "$E2IMAGE_RS" -r - {rs}"#),
        &env,
    );
    for (x, p) in [("a..b", "p1"), ("b..c", "p2")] {
        let patch = dir.join(p).display().to_string();
        shell(
            &format!(
                r#"aws s3 cp s3://replicas/home/{x}.qcow2 - | "$E2IMAGE_RS" apply - {rs} --patch {patch}"#
            ),
            &env,
        );
    }
    assert_replica_is_c(&q, &r, &dir);
}
