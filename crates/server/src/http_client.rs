//! A small HTTP/1.1 client for what the server calls out to: hooks, the auth callback
//! (`auth.http_url`) and JWKS keys. Plain `http://` only (put a local TLS proxy in front of an
//! `https://` endpoint). One request per connection; every step under one timeout; the
//! answer's body is capped.

use std::time::Duration;

use axum::http::{Method, Request, StatusCode, Uri, header};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// What can go wrong with a call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not `http://host[:port]/...`.
    #[error("bad URL: {0}")]
    BadUrl(String),
    /// Connecting, sending or reading the answer took longer than the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The connection failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The peer spoke no HTTP we understand.
    #[error("http: {0}")]
    Http(String),
    /// The answer's body is larger than allowed.
    #[error("answer body over {0} bytes")]
    TooLarge(usize),
}

/// Checks that `url` is one [`request`] can call: `http://host[:port]/...`.
pub fn check_url(url: &str) -> Result<Uri, ClientError> {
    let uri: Uri = url.parse().map_err(|e| ClientError::BadUrl(format!("{e}")))?;
    if uri.scheme_str() != Some("http") {
        return Err(ClientError::BadUrl("only http:// is supported".into()));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(ClientError::BadUrl("no host".into()));
    }
    Ok(uri)
}

/// Sends one request and reads the answer (status and body of at most `max_body` bytes), all
/// within `timeout`. `content_type` goes with a non-empty body.
pub async fn request(
    method: Method,
    url: &str,
    content_type: &str,
    body: Bytes,
    timeout: Duration,
    max_body: usize,
) -> Result<(StatusCode, Bytes), ClientError> {
    let uri = check_url(url)?;
    tokio::time::timeout(timeout, send(method, uri, content_type, body, max_body))
        .await
        .map_err(|_| ClientError::Timeout(timeout))?
}

async fn send(
    method: Method,
    uri: Uri,
    content_type: &str,
    body: Bytes,
    max_body: usize,
) -> Result<(StatusCode, Bytes), ClientError> {
    let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_owned();
    let port = uri.port_u16().unwrap_or(80);
    let stream = TcpStream::connect((host.as_str(), port)).await?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?;
    let driver = tokio::spawn(conn);
    let authority = uri.authority().map(|a| a.as_str().to_owned()).unwrap_or_default();
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut req = Request::builder().method(method).uri(path).header(header::HOST, authority);
    if !body.is_empty() {
        req = req.header(header::CONTENT_TYPE, content_type);
    }
    let req = req.body(Full::new(body)).map_err(|e| ClientError::Http(e.to_string()))?;
    let result = async {
        let resp = sender.send_request(req).await.map_err(|e| ClientError::Http(e.to_string()))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), max_body)
            .collect()
            .await
            .map_err(|e| match e.downcast::<http_body_util::LengthLimitError>() {
                Ok(_) => ClientError::TooLarge(max_body),
                Err(e) => ClientError::Http(e.to_string()),
            })?
            .to_bytes();
        Ok((status, body))
    }
    .await;
    driver.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn only_plain_http_urls() {
        assert!(check_url("http://127.0.0.1:8080/hook").is_ok());
        assert!(check_url("http://[::1]/x").is_ok());
        for bad in ["https://example.com/", "ftp://x/", "http:///x", "not a url"] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }

    /// A JSON POST reaches the peer whole; its answer comes back; a large answer is refused;
    /// a peer that never answers costs the timeout, no more.
    #[tokio::test]
    async fn post_answer_cap_and_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            for answer in
                [&b"HTTP/1.1 204 No Content\r\n\r\n"[..], b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n", b""]
            {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(7).any(|w| w == b"{\"a\":1}") {
                    let n = s.read(&mut buf).await.unwrap();
                    assert!(n > 0, "request cut short: {:?}", String::from_utf8_lossy(&got));
                    got.extend_from_slice(&buf[..n]);
                }
                assert!(got.starts_with(b"POST /hook?x=1 HTTP/1.1\r\n"));
                s.write_all(answer).await.unwrap();
                if answer.starts_with(b"HTTP/1.1 200") {
                    s.write_all(&[b'x'; 100]).await.unwrap();
                }
                if answer.is_empty() {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
            }
        });
        let url = format!("http://{addr}/hook?x=1");
        let post = |max| {
            request(
                Method::POST,
                &url,
                "application/json",
                Bytes::from_static(b"{\"a\":1}"),
                Duration::from_millis(500),
                max,
            )
        };
        let (status, body) = post(10).await.unwrap();
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert!(body.is_empty());
        assert!(matches!(post(10).await, Err(ClientError::TooLarge(10))));
        assert!(matches!(post(10).await, Err(ClientError::Timeout(_))));
        server.abort();
    }
}
