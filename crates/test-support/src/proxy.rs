//! A TCP proxy to a server (PostgreSQL, Redis) that can be stopped, every
//! connection dropped and new ones refused, like a server that went down,
//! and started again on the same port.

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

pub struct Proxy {
    pub port: u16,
    tasks: JoinSet<()>,
}

impl Proxy {
    /// Listens on `port` (0: a free one) and forwards to `upstream`
    /// (`host:port`).
    pub async fn start(port: u16, upstream: &str) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind proxy");
        let port = listener.local_addr().unwrap().port();
        let upstream = upstream.to_owned();
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let upstream = upstream.clone();
                conns.spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Proxy { port, tasks }
    }

    /// Stops listening and drops every proxied connection; the port, to
    /// start again on.
    pub async fn stop(mut self) -> u16 {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        self.port
    }
}
