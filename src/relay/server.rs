//! The listener: accepts connections, plain or TLS (rustls), bounds how many are open at once and how long a client
//! may take (request head, idle connection; the body's bound is applied where bodies are read), and on stop lets
//! requests in progress finish until the grace deadline, then closes whatever is left, so that no client can hold
//! a stopping relay open.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use super::config::{Http, Tls};
use super::ConfigError;

/// Reads the certificate chain and key named in `tls:`; every problem names the file.
pub(super) fn tls_acceptor(tls: &Tls) -> Result<TlsAcceptor, ConfigError> {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(&tls.cert).and_then(|certs| certs.collect()).map_err(|e| {
            ConfigError(format!("`tls.cert`: cannot read a PEM certificate from {}: {e}", tls.cert.display()))
        })?;
    if certs.is_empty() {
        return Err(ConfigError(format!("`tls.cert`: {} holds no certificate", tls.cert.display())));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| {
        ConfigError(format!("`tls.key`: cannot read a PEM private key from {}: {e}", tls.key.display()))
    })?;
    let mut config =
        tokio_rustls::rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| ConfigError(format!("`tls`: the certificate and key do not make a server identity: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `app` until `shutdown` holds a deadline; requests in progress then have until that deadline to finish.
pub(super) async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: Http,
    app: Router,
    mut shutdown: watch::Receiver<Option<Instant>>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (closing_tx, closing) = watch::channel(false);
    let mut connections = JoinSet::new();
    let deadline = loop {
        // At the connection limit the relay stops accepting until one closes; the kernel's backlog holds the rest.
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break None,
            },
            stop = stopped(&mut shutdown) => break stop,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            stop = stopped(&mut shutdown) => break stop,
        };
        while connections.try_join_next().is_some() {}
        connections.spawn(connection(stream, peer, tls.clone(), limits, app.clone(), closing.clone(), permit));
    };
    drop(listener);
    let _ = closing_tx.send(true);
    let deadline = deadline.unwrap_or_else(Instant::now);
    let drained =
        tokio::time::timeout_at(deadline.into(), async { while connections.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::info!(
            connections = connections.len(),
            "closing connections still open at the end of the grace period"
        );
        connections.shutdown().await;
    }
}

/// The deadline, once the relay is stopping; `None` if the sender is gone.
async fn stopped(shutdown: &mut watch::Receiver<Option<Instant>>) -> Option<Instant> {
    shutdown.wait_for(Option::is_some).await.ok().and_then(|deadline| *deadline)
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    limits: Http,
    app: Router,
    closing: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    match tls {
        None => drive(stream, peer, limits, app, closing).await,
        Some(acceptor) => match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => drive(stream, peer, limits, app, closing).await,
            Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
        },
    }
}

/// The most a request's head (request line and headers) may take.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Runs HTTP/1.1 on one connection until the client is done, it idles too long, or the relay is stopping.
async fn drive<IO>(io: IO, peer: SocketAddr, limits: Http, app: Router, mut closing: watch::Receiver<bool>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = Tracked::new(io);
    let activity = io.activity.clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        app.clone().oneshot(request)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // A request's head (request line and headers) beyond 64 KiB is refused with 431 instead of hyper's ~400 KB:
    // generous for cookies and long URLs, small enough that a client cannot make every connection hold much.
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).max_header_size(MAX_HEAD_BYTES);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let mut stopping = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%peer, %error, "connection ended with an error");
                }
                return;
            }
            _ = closing.wait_for(|closing| *closing), if !stopping => {
                // Finishes the request in progress, then closes; `serve` enforces the deadline.
                connection.as_mut().graceful_shutdown();
                stopping = true;
            }
            _ = activity.idle_for(limits.idle_timeout) => {
                tracing::debug!(%peer, "closing an idle connection");
                return;
            }
        }
    }
}

/// When a connection last moved a byte.
struct Activity {
    start: Instant,
    /// Milliseconds after `start`.
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        self.last_ms.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Resolves once no byte has moved for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let due = last + idle;
            if Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due.into()).await;
        }
    }
}

/// A stream that records its activity.
struct Tracked<IO> {
    inner: IO,
    activity: Arc<Activity>,
}

impl<IO> Tracked<IO> {
    fn new(inner: IO) -> Self {
        Tracked { inner, activity: Arc::new(Activity { start: Instant::now(), last_ms: AtomicU64::new(0) }) }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Tracked<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        result
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Tracked<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
