//! Where HTTP connections come in, before any route: accepts TCP connections, tells the
//! handlers the client's address, and turns the HTTP parser's own error answers into
//! problem+json.
//!
//! hyper answers a request it cannot parse (too many or too large headers: 431, a URI over
//! 64 KiB: 414, a malformed request line or header: 400) by itself, before any handler or
//! middleware runs, with an empty body — the one place where the API's promise that every
//! error is `application/problem+json` would not hold. Its answer is fixed inside hyper, so
//! the connection's writer recognizes that answer (one of those three statuses, no content
//! type, `content-length: 0`: no response of ours looks like that, every one of them carries
//! a content type) and writes a problem+json answer in its place.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use super::problem::PROBLEM_BASE;

/// A TCP listener whose connections answer parse errors with problem+json.
#[derive(Debug)]
pub(super) struct ProblemListener(TcpListener);

impl ProblemListener {
    pub(super) fn new(listener: TcpListener) -> Self {
        Self(listener)
    }
}

impl Listener for ProblemListener {
    type Io = ProblemIo<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, address) = Listener::accept(&mut self.0).await;
        // Answers are small and written whole: do not wait to coalesce them.
        let _ = stream.set_nodelay(true);
        (ProblemIo::new(stream), address)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// The connecting peer's address, as the handlers see it (`ConnectInfo<ClientAddr>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ClientAddr(pub SocketAddr);

impl Connected<IncomingStream<'_, ProblemListener>> for ClientAddr {
    fn connect_info(stream: IncomingStream<'_, ProblemListener>) -> Self {
        Self(*stream.remote_addr())
    }
}

/// A connection whose writer replaces hyper's bare parse-error answers (see the module).
#[derive(Debug)]
pub(super) struct ProblemIo<T> {
    inner: T,
    /// A replacement answer not yet written out.
    pending: Vec<u8>,
    written: usize,
}

impl<T> ProblemIo<T> {
    pub(super) fn new(inner: T) -> Self {
        Self {
            inner,
            pending: Vec::new(),
            written: 0,
        }
    }
}

impl<T: AsyncWrite + Unpin> ProblemIo<T> {
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            let n =
                ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.pending.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ProblemIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ProblemIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.drain(cx))?;
        if let Some(replacement) = problem_for_bare_error(buf) {
            self.pending = replacement;
            // The bytes are ours now: written out here, or by the flush or shutdown that
            // follows (hyper closes the connection after such an answer).
            if let Poll::Ready(Err(error)) = self.drain(cx) {
                return Poll::Ready(Err(error));
            }
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// hyper's own answer to a request it could not parse, as problem+json; `None` for anything
/// else (every answer of the API's own carries a content type).
fn problem_for_bare_error(buf: &[u8]) -> Option<Vec<u8>> {
    let (status, code, title, detail) = if buf.starts_with(b"HTTP/1.1 431 ") {
        (
            431,
            "headers-too-large",
            "Request Header Fields Too Large",
            "the request's headers are too many or too large",
        )
    } else if buf.starts_with(b"HTTP/1.1 414 ") {
        (
            414,
            "uri-too-long",
            "URI Too Long",
            "the request's URI is too long",
        )
    } else if buf.starts_with(b"HTTP/1.1 400 ") {
        (
            400,
            "bad-request",
            "Bad Request",
            "the request is not valid HTTP/1.1",
        )
    } else {
        return None;
    };
    let end = buf.windows(4).position(|window| window == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    if head.contains("\r\ncontent-type:") || !head.contains("\r\ncontent-length: 0\r\n") {
        return None;
    }
    let body = serde_json::json!({
        "type": format!("{PROBLEM_BASE}{code}"),
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
    })
    .to_string();
    let mut answer = format!(
        "HTTP/1.1 {status} {title}\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(&buf[end..]);
    Some(answer)
}

#[cfg(test)]
mod tests {
    use super::problem_for_bare_error;

    #[test]
    fn only_hypers_bare_answers_are_replaced() {
        let bare = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Thu, 03 Dec 2026 10:00:00 GMT\r\n\r\n";
        let replaced = String::from_utf8(problem_for_bare_error(bare).unwrap()).unwrap();
        assert!(replaced.starts_with("HTTP/1.1 431 "));
        assert!(replaced.contains("content-type: application/problem+json\r\n"));
        let body = &replaced[replaced.find("\r\n\r\n").unwrap() + 4..];
        let problem: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(problem["code"], "headers-too-large");
        assert_eq!(problem["status"], 431);
        assert!(replaced.contains(&format!("content-length: {}\r\n", body.len())));
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/problem+json\r\ncontent-length: 0\r\n\r\n";
        assert!(problem_for_bare_error(ours).is_none());
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        assert!(problem_for_bare_error(ok).is_none());
    }
}
