//! The NBD server: exports by name, listeners, connection bookkeeping.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::export::ExportBackend;
use crate::{Error, Result};

mod conn;

/// Worker threads per connection: requests of one connection (QEMU keeps up
/// to 16 in flight) are served this many at a time.
const WORKERS: usize = 4;
/// Socket buffer size for replies.
const BUF_SIZE: usize = 256 << 10;

/// One export.
pub(crate) struct ExportEntry {
    pub(crate) name: String,
    pub(crate) description: String,
    pub(crate) backend: Arc<dyn ExportBackend>,
    /// Set by [`NbdServer::remove_export`]: requests get `ESHUTDOWN`.
    pub(crate) removed: AtomicBool,
}

/// A connected socket, kept so the server can end the connection.
enum Sock {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Sock {
    fn shutdown(&self) {
        let _ = match self {
            Sock::Unix(s) => s.shutdown(Shutdown::Both),
            Sock::Tcp(s) => s.shutdown(Shutdown::Both),
        };
    }
}

struct Conn {
    listener: u64,
    export: Option<String>,
    sock: Sock,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Conns {
    next_id: u64,
    map: HashMap<u64, Conn>,
}

/// An NBD server: named exports served over any number of Unix-socket and
/// TCP listeners, one thread per connection (plus four workers, so one
/// connection's requests are served concurrently).
///
/// Fixed newstyle negotiation with `NBD_OPT_GO`, `NBD_OPT_INFO`,
/// `NBD_OPT_EXPORT_NAME`, `NBD_OPT_LIST`, `NBD_OPT_STRUCTURED_REPLY` and the
/// `base:allocation` metadata context; commands READ (structured replies with
/// data and hole chunks), WRITE, FLUSH, TRIM (accepted, no effect),
/// WRITE_ZEROES, CACHE (accepted, no effect), BLOCK_STATUS and DISC. Writes to
/// read-only exports fail with `EPERM`; ranges outside the export with
/// `EINVAL` (`ENOSPC` for writes, as the protocol asks); a malformed request
/// ends the connection. The empty export name selects the only export when
/// there is exactly one. No TLS: serve on Unix sockets or trusted networks.
pub struct NbdServer {
    exports: RwLock<BTreeMap<String, Arc<ExportEntry>>>,
    conns: Mutex<Conns>,
}

impl NbdServer {
    /// A server without exports.
    pub fn new() -> Arc<Self> {
        Arc::new(NbdServer {
            exports: RwLock::new(BTreeMap::new()),
            conns: Mutex::new(Conns::default()),
        })
    }

    /// Adds (or replaces) the export `name`. Connections already using an
    /// export of that name keep the old backend.
    pub fn add_export(&self, name: &str, description: &str, backend: Arc<dyn ExportBackend>) {
        let entry = Arc::new(ExportEntry {
            name: name.to_string(),
            description: description.to_string(),
            backend,
            removed: AtomicBool::new(false),
        });
        if let Some(old) = self.exports_mut().insert(name.to_string(), entry) {
            old.removed.store(true, Ordering::Release);
        }
    }

    /// Removes the export `name`: new connections cannot choose it, and the
    /// connections using it end (their pending requests fail with
    /// `ESHUTDOWN`). Returns false when there was no such export.
    pub fn remove_export(&self, name: &str) -> bool {
        let Some(entry) = self.exports_mut().remove(name) else {
            return false;
        };
        entry.removed.store(true, Ordering::Release);
        let conns = self.conns();
        for c in conns.map.values() {
            if c.export.as_deref() == Some(name) {
                c.sock.shutdown();
            }
        }
        true
    }

    /// The export names, sorted.
    pub fn export_names(&self) -> Vec<String> {
        self.exports_ref().keys().cloned().collect()
    }

    /// Listens on a Unix socket at `path`. A stale socket file (nobody
    /// listening) is replaced; a live one is an error.
    pub fn serve_unix(self: &Arc<Self>, path: &Path) -> Result<ServerHandle> {
        let io_err = |op: &str, source: io::Error| Error::Io {
            export: String::new(),
            endpoint: format!("unix:{}", path.display()),
            op: op.to_string(),
            source,
        };
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(Error::Invalid {
                    what: format!("socket path {}", path.display()),
                    reason: "exists and is not a socket".into(),
                });
            }
            if UnixStream::connect(path).is_ok() {
                return Err(Error::Invalid {
                    what: format!("socket path {}", path.display()),
                    reason: "another server is listening there".into(),
                });
            }
            std::fs::remove_file(path).map_err(|e| io_err("remove stale socket", e))?;
        }
        let listener = UnixListener::bind(path).map_err(|e| io_err("bind", e))?;
        self.listen(
            listener,
            |l| l.accept().map(|(s, _)| s),
            Self::spawn_unix,
            (path.display().to_string(), Wake::Unix(path.to_path_buf())),
            io_err,
        )
    }

    /// Listens on TCP at `addr` (`host:port`; port 0 picks a free port, see
    /// [`ServerHandle::local_addr`]). Connections get `TCP_NODELAY`.
    pub fn serve_tcp(self: &Arc<Self>, addr: &str) -> Result<ServerHandle> {
        let io_err = |op: &str, source: io::Error| Error::Io {
            export: String::new(),
            endpoint: format!("tcp:{addr}"),
            op: op.to_string(),
            source,
        };
        let listener = TcpListener::bind(addr).map_err(|e| io_err("bind", e))?;
        let local = listener.local_addr().map_err(|e| io_err("local address", e))?;
        self.listen(
            listener,
            |l| l.accept().map(|(s, _)| s),
            Self::spawn_tcp,
            (local.to_string(), Wake::Tcp(local)),
            io_err,
        )
    }

    /// Starts the accept thread of `listener` (`accept` takes the next connection, `serve` serves
    /// it) and returns its handle, which shows `addr` and is woken by `wake`. `io_err` names the
    /// endpoint in errors.
    fn listen<L, S>(
        self: &Arc<Self>,
        listener: L,
        accept: fn(&L) -> io::Result<S>,
        serve: fn(&Arc<Self>, u64, S),
        (addr, wake): (String, Wake),
        io_err: impl Fn(&str, io::Error) -> Error,
    ) -> Result<ServerHandle>
    where
        L: AsFd + Send + 'static,
        S: 'static,
    {
        let fd: OwnedFd = listener
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| io_err("clone listener", e))?;
        let id = self.next_listener_id();
        let stop = Arc::new(AtomicBool::new(false));
        let server = Arc::clone(self);
        let thread = accept_thread(
            Arc::clone(&stop),
            move || accept(&listener),
            move |s| serve(&server, id, s),
        )
        .map_err(|e| io_err("spawn accept thread", e))?;
        Ok(ServerHandle {
            server: Arc::clone(self),
            id,
            addr,
            wake,
            listener: fd,
            stop,
            thread: Some(thread),
        })
    }

    /// Serves one connection on an already connected stream, given as its
    /// reading and writing halves, in the calling thread (requests one at a
    /// time), until the client disconnects or the stream ends. The listeners
    /// use the same code; the fuzz targets call this with in-memory streams.
    pub fn serve_stream<R: io::Read, W: io::Write + Send>(&self, reader: R, writer: W) -> Result<()> {
        conn::serve(self, None, reader, writer, 0).map_err(|source| Error::Io {
            export: String::new(),
            endpoint: "stream".into(),
            op: "serve".into(),
            source,
        })
    }

    fn spawn_unix(self: &Arc<Self>, listener: u64, s: UnixStream) {
        if let (Ok(r), Ok(k)) = (s.try_clone(), s.try_clone()) {
            self.spawn_stream(listener, Sock::Unix(k), r, s);
        }
    }

    fn spawn_tcp(self: &Arc<Self>, listener: u64, s: TcpStream) {
        let _ = s.set_nodelay(true);
        if let (Ok(r), Ok(k)) = (s.try_clone(), s.try_clone()) {
            self.spawn_stream(listener, Sock::Tcp(k), r, s);
        }
    }

    /// Serves an accepted connection read from `r` and written to `w` (clones of one socket;
    /// `sock`, a third, shuts it down) on a thread of its own.
    fn spawn_stream<S: Read + Write + Send + 'static>(self: &Arc<Self>, listener: u64, sock: Sock, r: S, w: S) {
        self.spawn(listener, sock, move |server, id| {
            let _ = conn::serve(
                server,
                Some(id),
                BufReader::with_capacity(BUF_SIZE, r),
                BufWriter::with_capacity(BUF_SIZE, w),
                WORKERS,
            );
        });
    }

    fn spawn(self: &Arc<Self>, listener: u64, sock: Sock, run: impl FnOnce(&NbdServer, u64) + Send + 'static) {
        let id = {
            let mut conns = self.conns();
            conns.next_id += 1;
            let id = conns.next_id;
            conns.map.insert(
                id,
                Conn {
                    listener,
                    export: None,
                    sock,
                    thread: None,
                },
            );
            id
        };
        let server = Arc::clone(self);
        let spawned = std::thread::Builder::new().name("nbd-conn".into()).spawn(move || {
            run(&server, id);
            server.conns().map.remove(&id);
        });
        let mut conns = self.conns();
        match spawned {
            Ok(handle) => {
                if let Some(c) = conns.map.get_mut(&id) {
                    c.thread = Some(handle);
                }
            }
            Err(_) => {
                if let Some(c) = conns.map.remove(&id) {
                    c.sock.shutdown();
                }
            }
        }
    }

    /// Records which export connection `id` uses (so `remove_export` can end it).
    pub(crate) fn set_conn_export(&self, id: u64, export: &str) {
        if let Some(c) = self.conns().map.get_mut(&id) {
            c.export = Some(export.to_string());
        }
    }

    pub(crate) fn lookup(&self, name: &str) -> Option<Arc<ExportEntry>> {
        let exports = self.exports_ref();
        if let Some(e) = exports.get(name) {
            return Some(Arc::clone(e));
        }
        if name.is_empty() && exports.len() == 1 {
            return exports.values().next().cloned();
        }
        None
    }

    pub(crate) fn all_exports(&self) -> Vec<Arc<ExportEntry>> {
        self.exports_ref().values().cloned().collect()
    }

    fn next_listener_id(&self) -> u64 {
        let mut conns = self.conns();
        conns.next_id += 1;
        conns.next_id
    }

    fn conns(&self) -> std::sync::MutexGuard<'_, Conns> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn exports_ref(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<ExportEntry>>> {
        self.exports.read().unwrap_or_else(|p| p.into_inner())
    }

    fn exports_mut(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<ExportEntry>>> {
        self.exports.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends the connections accepted by `listener` and waits for their threads.
    fn end_connections(&self, listener: u64) {
        let threads: Vec<JoinHandle<()>> = {
            let mut conns = self.conns();
            conns
                .map
                .values_mut()
                .filter(|c| c.listener == listener)
                .filter_map(|c| {
                    c.sock.shutdown();
                    c.thread.take()
                })
                .collect()
        };
        for t in threads {
            let _ = t.join();
        }
    }
}

/// How to wake a listener blocked in `accept`.
enum Wake {
    Unix(PathBuf),
    Tcp(std::net::SocketAddr),
}

/// A running listener of an [`NbdServer`]. [`shutdown`](Self::shutdown) (or
/// dropping the handle) stops accepting, ends the connections it accepted,
/// waits for their threads, and removes its Unix socket file.
pub struct ServerHandle {
    server: Arc<NbdServer>,
    id: u64,
    addr: String,
    wake: Wake,
    listener: OwnedFd,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ServerHandle {
    /// Where the listener listens: the socket path, or the bound `ip:port`.
    pub fn local_addr(&self) -> String {
        self.addr.clone()
    }

    /// The endpoint a client connects to.
    pub fn endpoint(&self) -> crate::Endpoint {
        match &self.wake {
            Wake::Unix(p) => crate::Endpoint::Unix(p.clone()),
            Wake::Tcp(a) => crate::Endpoint::Tcp(a.to_string()),
        }
    }

    /// Stops the listener and ends its connections.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.stop.store(true, Ordering::Release);
        // shutdown(2) on a listening socket makes a blocked accept fail on
        // Linux; connecting to it is the portable fallback.
        let _ = rustix::net::shutdown(&self.listener, rustix::net::Shutdown::Both);
        match &self.wake {
            Wake::Unix(p) => drop(UnixStream::connect(p)),
            Wake::Tcp(a) => drop(TcpStream::connect_timeout(a, Duration::from_secs(1))),
        }
        let _ = thread.join();
        self.server.end_connections(self.id);
        if let Wake::Unix(p) = &self.wake {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop_now();
    }
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Starts the thread that accepts connections with `accept` and hands each to `serve` until
/// `stop` is set (a failed accept is retried after a short pause).
fn accept_thread<S>(
    stop: Arc<AtomicBool>,
    mut accept: impl FnMut() -> io::Result<S> + Send + 'static,
    mut serve: impl FnMut(S) + Send + 'static,
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("nbd-accept".into()).spawn(move || {
        while !stop.load(Ordering::Acquire) {
            match accept() {
                Ok(s) => {
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                    serve(s);
                }
                Err(_) if stop.load(Ordering::Acquire) => break,
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    })
}
