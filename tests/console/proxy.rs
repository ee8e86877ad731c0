//! A TCP proxy between the browser and `runbook serve` that can cut every connection (a network
//! blip) or hold back what the server sends on event streams (a buffering proxy): what the run
//! page's live view must survive. It notes each event-stream request's `Last-Event-ID`.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

#[derive(Default)]
struct State {
    next: AtomicU64,
    mute_streams: AtomicBool,
    /// The tasks of each open connection, to cut them.
    open: Mutex<HashMap<u64, Vec<JoinHandle<()>>>>,
    /// The `Last-Event-ID` of each event-stream request, in order (`None`: the first connect).
    stream_requests: Mutex<Vec<Option<String>>>,
}

pub struct Proxy {
    pub base: String,
    state: Arc<State>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(State::default());
        let upstream = upstream.to_owned();
        let st = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let id = st.next.fetch_add(1, Ordering::SeqCst);
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let is_stream = Arc::new(AtomicBool::new(false));
                let (st1, flag1) = (st.clone(), is_stream.clone());
                let up = tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n) = cr.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        let text = String::from_utf8_lossy(&buf[..n]);
                        if text.starts_with("GET /ui/runs/") && text.contains("/events") {
                            flag1.store(true, Ordering::SeqCst);
                            let last = text.lines().find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("last-event-id:")
                                    .map(|v| v.trim().to_owned())
                            });
                            st1.stream_requests.lock().unwrap().push(last);
                        }
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
                let (st2, flag2) = (st.clone(), is_stream);
                let down = tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n) = sr.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        // A buffering proxy: an event stream's bytes never arrive.
                        if flag2.load(Ordering::SeqCst) && st2.mute_streams.load(Ordering::SeqCst) {
                            continue;
                        }
                        if cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
                st.open.lock().unwrap().insert(id, vec![up, down]);
            }
        });
        Proxy {
            base,
            state,
            accept,
        }
    }

    /// Drops every open connection, as a network blip does.
    pub fn cut(&self) {
        for (_, tasks) in self.state.open.lock().unwrap().drain() {
            for t in tasks {
                t.abort();
            }
        }
    }

    /// Holds back everything the server sends on event streams (from now on).
    pub fn mute_streams(&self, on: bool) {
        self.state.mute_streams.store(on, Ordering::SeqCst);
    }

    /// The `Last-Event-ID` of each event-stream request so far.
    pub fn stream_requests(&self) -> Vec<Option<String>> {
        self.state.stream_requests.lock().unwrap().clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}
