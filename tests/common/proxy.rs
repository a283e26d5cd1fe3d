//! A TCP proxy in front of PostgreSQL that a test can cut (every connection dropped, new ones refused) and restore:
//! a database outage for one test's processes, without touching the server other tests share.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};

pub struct Proxy {
    pub port: u16,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `target` (host:port).
    pub async fn start(target: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (up, conns) = (Arc::new(AtomicBool::new(true)), Arc::new(Mutex::new(Vec::new())));
        let (u, c, target) = (up.clone(), conns.clone(), target.to_owned());
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !u.load(Ordering::SeqCst) {
                    continue; // refused: dropped at once
                }
                let Ok(mut server) = TcpStream::connect(&target).await else { continue };
                let h = tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
                // A connection accepted just before `cut` may be pushed after its drain: `cut` clears `up` before it
                // drains, so looking again under the lock closes every such connection (one or the other sees it).
                let mut conns = c.lock().unwrap();
                if u.load(Ordering::SeqCst) {
                    conns.push(h.abort_handle());
                } else {
                    h.abort();
                }
            }
        });
        Proxy { port, up, conns, accept }
    }

    /// `url` (a postgres:// URL) pointed at this proxy.
    pub fn url(&self, url: &str) -> String {
        let mut u = url::Url::parse(url).unwrap();
        u.set_host(Some("127.0.0.1")).unwrap();
        u.set_port(Some(self.port)).unwrap();
        u.to_string()
    }

    /// The database "goes away": open connections are cut, new ones refused.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}
