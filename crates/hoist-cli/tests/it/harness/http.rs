//! A minimal HTTP/1.1 server for what a real registry cannot be made to do
//! (faults) and for the token issuer. One thread per connection; each
//! handler writes its own response, so it can also misbehave.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: HashMap<String, String>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

pub type Handler = dyn Fn(&Request, &mut TcpStream) + Send + Sync;

/// Serve on a free loopback port until the process ends; returns the port.
pub fn serve(handler: Arc<Handler>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(stream) = conn else { continue };
            let h = handler.clone();
            std::thread::spawn(move || connection(stream, h));
        }
    });
    port
}

fn connection(mut stream: TcpStream, handler: Arc<Handler>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p.to_string(), q.to_string()),
            None => (target.clone(), String::new()),
        };
        let req = Request {
            method,
            path,
            query,
            headers,
        };
        handler(&req, &mut stream);
        if stream.flush().is_err() {
            return;
        }
    }
}

/// Write a complete response.
pub fn respond(stream: &mut TcpStream, status: u16, headers: &[(&str, String)], body: &[u8]) {
    let mut head = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
}

/// A registry-style JSON error.
pub fn respond_error(stream: &mut TcpStream, status: u16, code: &str, headers: &[(&str, String)]) {
    let body = format!(
        r#"{{"errors":[{{"code":"{code}","message":"{}"}}]}}"#,
        code.to_lowercase()
    );
    let mut h = headers.to_vec();
    h.push(("Content-Type", "application/json".into()));
    respond(stream, status, &h, body.as_bytes());
}
