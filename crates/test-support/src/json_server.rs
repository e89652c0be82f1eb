//! json-server, an off-the-shelf REST server from the npm registry (the
//! version pinned in `.ci/peers/package.json`, installed by
//! `.ci/install-peers`), started on a free loopback port with its own JSON
//! file as store. Its own request log counts what a sync sent it.

use crate::TempDir;
use crate::http::exchange;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running json-server, stopped on drop.
pub struct JsonServer {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
    marks: usize,
    /// Its store (`db.json`) and log.
    pub dir: TempDir,
}

/// The requests one stretch of the log holds, by method.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Requests(pub BTreeMap<String, usize>);

impl Requests {
    pub fn of(&self, method: &str) -> usize {
        self.0.get(method).copied().unwrap_or(0)
    }

    /// Requests that change the store: `POST`, `PUT`, `PATCH`, `DELETE`.
    pub fn writes(&self) -> usize {
        ["POST", "PUT", "PATCH", "DELETE"]
            .iter()
            .map(|m| self.of(m))
            .sum()
    }
}

/// json-server's entry point: `SYNCD_JSON_SERVER`, else the copy
/// `.ci/install-peers` installs. Missing, the test is skipped with a note
/// (a failure under `CI=true`).
pub fn entry_point() -> Option<PathBuf> {
    let path = std::env::var_os("SYNCD_JSON_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../.ci/peers/node_modules/json-server/lib/cli/bin.js")
        });
    if path.is_file() {
        Some(path)
    } else {
        crate::missing(
            "json-server (run `bash .ci/install-peers`)",
            format!("{} not found", path.display()),
        )
    }
}

/// Removes terminal colour codes (json-server's log has them).
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl JsonServer {
    /// Starts json-server with `collections` (`{"customers": [...], ...}`)
    /// as its store.
    pub async fn start(collections: &Value) -> Option<JsonServer> {
        let bin = entry_point()?;
        let dir = TempDir::new("json-server");
        let db = dir.0.join("db.json");
        std::fs::write(&db, serde_json::to_vec_pretty(collections).unwrap()).unwrap();
        let log = dir.0.join("server.log");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let child = Command::new("node")
            .arg(&bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .arg(&db)
            .current_dir(&dir.0)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start node {}: {e}", bin.display()));
        let mut server = JsonServer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            log,
            marks: 0,
            dir,
        };
        let started = Instant::now();
        while tokio::net::TcpStream::connect(server.addr).await.is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!(
                    "json-server exited at start ({status}): {}",
                    std::fs::read_to_string(&server.log).unwrap_or_default()
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "json-server not listening on port {port}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// One request; the answer's status and body.
    pub async fn send(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let body = body.map(|b| b.to_string());
        let reply = exchange(self.addr, method, path, &[], body.as_deref().map(str::as_bytes))
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        (reply.status, reply.body)
    }

    /// Every record of `collection`, in id order.
    pub async fn records(&self, collection: &str) -> Vec<Value> {
        let (status, body) = self.send("GET", &format!("/{collection}?_sort=id"), None).await;
        assert_eq!(status, 200, "GET /{collection}: {body}");
        match body {
            Value::Array(items) => items,
            other => panic!("GET /{collection} answered {other}"),
        }
    }

    /// Creates a record; the record as stored (with its new id).
    pub async fn create(&self, collection: &str, record: Value) -> Value {
        let (status, body) = self.send("POST", &format!("/{collection}"), Some(&record)).await;
        assert_eq!(status, 201, "POST /{collection}: {body}");
        body
    }

    /// Changes fields of a record.
    pub async fn patch(&self, collection: &str, id: &Value, fields: Value) {
        let path = format!("/{collection}/{}", id_text(id));
        let (status, body) = self.send("PATCH", &path, Some(&fields)).await;
        assert_eq!(status, 200, "PATCH {path}: {body}");
    }

    pub async fn delete(&self, collection: &str, id: &Value) {
        let path = format!("/{collection}/{}", id_text(id));
        let (status, body) = self.send("DELETE", &path, None).await;
        assert_eq!(status, 200, "DELETE {path}: {body}");
    }

    /// The request lines of the log (`GET /customers?_page=1 200`).
    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(plain)
            .filter(|l| {
                ["GET ", "POST ", "PUT ", "PATCH ", "DELETE "]
                    .iter()
                    .any(|m| l.starts_with(m))
            })
            .collect()
    }

    /// Puts a mark in the server's log (a request of its own) and waits
    /// until it is written: every request answered before is logged by
    /// then. Returns the mark, for [`requests_between`](Self::requests_between).
    pub async fn mark(&mut self) -> usize {
        self.marks += 1;
        let path = format!("/__syncd_mark_{}", self.marks);
        self.send("GET", &path, None).await;
        let started = Instant::now();
        while !self
            .lines()
            .iter()
            .any(|l| l.starts_with(&format!("GET {path} ")))
        {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "json-server never logged {path}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.marks
    }

    /// The requests logged between marks `from` and `to`, by method.
    pub fn requests_between(&self, from: usize, to: usize) -> Requests {
        let lines = self.lines();
        let at = |n: usize| {
            lines
                .iter()
                .position(|l| l.starts_with(&format!("GET /__syncd_mark_{n} ")))
                .unwrap_or_else(|| panic!("mark {n} is not in the log"))
        };
        let mut counts = BTreeMap::new();
        for line in &lines[at(from) + 1..at(to)] {
            let method = line.split(' ').next().unwrap_or_default();
            *counts.entry(method.to_owned()).or_insert(0) += 1;
        }
        Requests(counts)
    }
}

fn id_text(id: &Value) -> String {
    match id {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Drop for JsonServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
