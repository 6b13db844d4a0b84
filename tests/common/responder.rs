//! A scripted local HTTP/1.1 responder standing in for InfluxDB: it records
//! every request exactly (method, path, query, headers, body) and answers each
//! by a function of it.
//!
//! It is a few lines over `tokio::net::TcpListener` rather than a crate: it
//! only needs to parse requests with a `Content-Length` body, record them,
//! and answer with scripted statuses.

use std::io::Read as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// How long [`Responder::wait_for_requests`] waits.
const WAIT_LIMIT: Duration = Duration::from_secs(20);

/// One request as the responder received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Arrival order at this responder, from 0.
    pub index: usize,
    pub method: String,
    pub path: String,
    /// Decoded query pairs in the order sent.
    pub query: Vec<(String, String)>,
    /// Names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The status it was answered with.
    pub status: u16,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }

    /// The body, gunzipped; every write must be gzipped.
    pub fn lines(&self) -> String {
        assert_eq!(self.header("content-encoding"), Some("gzip"), "request {} is not gzipped", self.index);
        let mut text = String::new();
        flate2::read::GzDecoder::new(&self.body[..]).read_to_string(&mut text).expect("a gzip body");
        text
    }
}

pub struct Reply {
    /// `None`: never answer.
    status: Option<u16>,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply { status: Some(status), headers: Vec::new(), body: String::new() }
    }

    pub fn never() -> Reply {
        Reply { status: None, headers: Vec::new(), body: String::new() }
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn body(mut self, body: &str) -> Reply {
        self.body = body.into();
        self
    }

    fn to_bytes(&self, status: u16) -> Vec<u8> {
        let mut text = format!("HTTP/1.1 {status} Scripted\r\n");
        for (name, value) in &self.headers {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        if status != 204 {
            text.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        text.push_str("\r\n");
        text.push_str(&self.body);
        text.into_bytes()
    }
}

type Answer = dyn Fn(&Recorded) -> Reply + Send + Sync;

/// A local HTTP/1.1 server answering each request by a function of it.
pub struct Responder {
    pub url: String,
    recorded: Arc<Mutex<Vec<Recorded>>>,
    accept_loop: JoinHandle<()>,
}

impl Responder {
    pub async fn start(answer: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Responder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let recorded: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let answer: Arc<Answer> = Arc::new(answer);
        let accept_loop = tokio::spawn({
            let recorded = Arc::clone(&recorded);
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(serve(stream, Arc::clone(&recorded), Arc::clone(&answer)));
                }
            }
        });
        Responder { url, recorded, accept_loop }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.recorded.lock().unwrap().clone()
    }

    pub async fn wait_for_requests(&self, count: usize) {
        let waiting = async {
            while self.recorded.lock().unwrap().len() < count {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(WAIT_LIMIT, waiting).await.expect("the requests did not come within the limit")
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

/// Serves one connection, keep-alive included.
async fn serve(stream: TcpStream, recorded: Arc<Mutex<Vec<Recorded>>>, answer: Arc<Answer>) {
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    while let Some(mut request) = read_request(&mut reader).await {
        let reply = {
            let mut recorded = recorded.lock().unwrap();
            request.index = recorded.len();
            let reply = answer(&request);
            request.status = reply.status.unwrap_or(0);
            recorded.push(request);
            reply
        };
        let Some(status) = reply.status else {
            std::future::pending::<()>().await;
            return;
        };
        if writer.write_all(&reply.to_bytes(status)).await.is_err() {
            return;
        }
    }
}

/// Reads one request; `None` at the end of the connection.
async fn read_request(reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> Option<Recorded> {
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).await.ok()? == 0 {
        return None;
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').expect("a header line");
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    assert!(
        !headers.iter().any(|(name, _)| name == "transfer-encoding"),
        "the responder reads Content-Length bodies only"
    );
    let length = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .map_or(0, |(_, value)| value.parse::<usize>().expect("a numeric Content-Length"));
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await.ok()?;
    let url = reqwest::Url::parse(&format!("http://responder{target}")).expect("a request target");
    Some(Recorded {
        index: 0,
        method,
        path: url.path().to_string(),
        query: url.query_pairs().map(|(name, value)| (name.into_owned(), value.into_owned())).collect(),
        headers,
        body,
        status: 0,
    })
}
