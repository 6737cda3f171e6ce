//! Follows an HTTP/1 request stream byte by byte, beside hyper, to know
//! where each request's head and body end. hyper frames requests itself;
//! this is for what hyper does not tell the service:
//!
//! - a head with both `Content-Length` and `Transfer-Encoding`: hyper obeys
//!   Transfer-Encoding and drops Content-Length before the service sees the
//!   request (RFC 9112 §6.1 allows that), but a gateway in front of servers
//!   that may frame it the other way refuses it outright (400, nothing
//!   forwarded), so the scanner notes which request it was;
//! - whether the connection sits between requests (every byte received
//!   belongs to a complete message): only then may an idle connection give
//!   back hyper's buffers.
//!
//! It never frames anything for hyper. On whatever it does not follow (a
//! protocol upgrade, CONNECT, a head or chunk hyper refuses anyway) it stops
//! following the connection (`Lost`), which is then served as usual.

use std::mem::MaybeUninit;

use httparse::Status;

/// Header fields parsed on the stack; a head with more is parsed again
/// with room for `max_headers`.
const STACK_HEADERS: usize = 64;

#[derive(Debug)]
pub struct Framing {
    state: State,
    /// A head that arrived in pieces, until it is complete.
    partial: Vec<u8>,
    max_head: usize,
    max_headers: usize,
    heads: u64,
    smuggled: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Body(u64),
    Chunked(Chunk),
    Lost,
}

/// hyper's chunked decoder, step for step (CRLF only, as hyper demands).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size { size: u64, digits: u32 },
    SizeSpace { size: u64 },
    Extension { size: u64 },
    SizeLf { size: u64 },
    Data(u64),
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
}

/// What a complete head says about the body after it.
#[derive(Debug, PartialEq, Eq)]
enum HeadFraming {
    Length(u64),
    Chunked,
    /// Both Content-Length and Transfer-Encoding.
    Ambiguous,
    /// An upgrade, CONNECT, or a framing hyper refuses.
    Unfollowed,
}

impl Framing {
    /// `max_head`: beyond it hyper refuses the head, so stop following.
    pub fn new(max_head: usize, max_headers: usize) -> Framing {
        Framing {
            state: State::Head,
            partial: Vec::new(),
            max_head,
            max_headers,
            heads: 0,
            smuggled: None,
        }
    }

    /// The index (from 0, in arrival order) of the first request that
    /// carried both Content-Length and Transfer-Encoding.
    pub fn smuggled(&self) -> Option<u64> {
        self.smuggled
    }

    /// Complete request heads received so far.
    pub fn heads(&self) -> u64 {
        self.heads
    }

    /// Every byte received so far belongs to a complete request.
    pub fn between_requests(&self) -> bool {
        self.state == State::Head && self.partial.is_empty()
    }

    /// The next bytes the client sent.
    pub fn feed(&mut self, mut input: &[u8]) {
        while !input.is_empty() {
            input = match self.state {
                State::Lost => return,
                State::Head => self.head(input),
                State::Body(left) => {
                    let (left, rest) = consume(left, input);
                    self.state = if left == 0 {
                        State::Head
                    } else {
                        State::Body(left)
                    };
                    rest
                }
                State::Chunked(chunk) => self.chunked(chunk, input),
            };
        }
    }

    fn head<'a>(&mut self, input: &'a [u8]) -> &'a [u8] {
        if self.partial.is_empty() {
            return match self.parse(input) {
                Some(Status::Complete(n)) => &input[n..],
                Some(Status::Partial) => {
                    self.keep_partial(input.to_vec());
                    &[]
                }
                None => &[],
            };
        }
        let had = self.partial.len();
        let mut head = std::mem::take(&mut self.partial);
        head.extend_from_slice(input);
        // A head ends with an empty line: parse again only when one may
        // have arrived, so a head sent a byte at a time costs no more than
        // one sent at once. (The old part held none, or it was parsed.)
        let fresh = &head[had.saturating_sub(2)..];
        let may_be_complete = memchr::memmem::find(fresh, b"\n\r\n").is_some()
            || memchr::memmem::find(fresh, b"\n\n").is_some();
        if may_be_complete {
            match self.parse(&head) {
                Some(Status::Complete(n)) => return &input[n - had..],
                Some(Status::Partial) => {}
                None => return &[],
            }
        }
        self.keep_partial(head);
        &[]
    }

    fn keep_partial(&mut self, head: Vec<u8>) {
        if head.len() > self.max_head {
            self.lose();
        } else {
            self.partial = head;
        }
    }

    fn lose(&mut self) {
        self.state = State::Lost;
        self.partial = Vec::new();
    }

    /// Parses a head at the start of `bytes`: its length once complete, or
    /// `None` when the connection is no longer followed.
    fn parse(&mut self, bytes: &[u8]) -> Option<Status<usize>> {
        // Uninitialized: httparse writes the headers it finds, and filling
        // 64 empty ones first cost a quarter of a parse.
        let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_HEADERS];
        let mut heap;
        let mut request = httparse::Request::new(&mut []);
        let mut parsed = request.parse_with_uninit_headers(bytes, &mut stack);
        if matches!(parsed, Err(httparse::Error::TooManyHeaders)) {
            heap = vec![MaybeUninit::uninit(); self.max_headers + 1];
            request = httparse::Request::new(&mut []);
            parsed = request.parse_with_uninit_headers(bytes, &mut heap);
        }
        let status = match parsed {
            Ok(status) => status,
            Err(_) => {
                self.lose();
                return None;
            }
        };
        let Status::Complete(len) = status else {
            return Some(Status::Partial);
        };
        if len > self.max_head {
            self.lose();
            return None;
        }
        let index = self.heads;
        self.heads += 1;
        self.state = match head_framing(&request) {
            HeadFraming::Length(0) => State::Head,
            HeadFraming::Length(n) => State::Body(n),
            HeadFraming::Chunked => State::Chunked(Chunk::Size { size: 0, digits: 0 }),
            HeadFraming::Ambiguous => {
                self.smuggled.get_or_insert(index);
                State::Lost
            }
            HeadFraming::Unfollowed => State::Lost,
        };
        Some(Status::Complete(len))
    }

    fn chunked<'a>(&mut self, chunk: Chunk, input: &'a [u8]) -> &'a [u8] {
        if let Chunk::Data(left) = chunk {
            let (left, rest) = consume(left, input);
            self.state = State::Chunked(if left == 0 {
                Chunk::DataCr
            } else {
                Chunk::Data(left)
            });
            return rest;
        }
        let byte = input[0];
        let next = match (chunk, byte) {
            (Chunk::Size { size, digits }, b) if b.is_ascii_hexdigit() => {
                // hyper refuses a size past u64; so does this.
                if digits >= 16 {
                    None
                } else {
                    let digit = (b as char).to_digit(16).expect("hex digit") as u64;
                    Some(Chunk::Size {
                        size: size * 16 + digit,
                        digits: digits + 1,
                    })
                }
            }
            (Chunk::Size { size, digits }, b' ' | b'\t') if digits > 0 => {
                Some(Chunk::SizeSpace { size })
            }
            (Chunk::SizeSpace { size }, b' ' | b'\t') => Some(Chunk::SizeSpace { size }),
            (Chunk::Size { size, digits }, b';') if digits > 0 => Some(Chunk::Extension { size }),
            (Chunk::SizeSpace { size }, b';') => Some(Chunk::Extension { size }),
            (Chunk::Size { size, digits }, b'\r') if digits > 0 => Some(Chunk::SizeLf { size }),
            (Chunk::SizeSpace { size } | Chunk::Extension { size }, b'\r') => {
                Some(Chunk::SizeLf { size })
            }
            (Chunk::Extension { .. }, b'\n') => None,
            (Chunk::Extension { size }, _) => Some(Chunk::Extension { size }),
            (Chunk::SizeLf { size: 0 }, b'\n') => Some(Chunk::TrailerStart),
            (Chunk::SizeLf { size }, b'\n') => Some(Chunk::Data(size)),
            (Chunk::DataCr, b'\r') => Some(Chunk::DataLf),
            (Chunk::DataLf, b'\n') => Some(Chunk::Size { size: 0, digits: 0 }),
            (Chunk::TrailerStart, b'\r') => Some(Chunk::EndLf),
            (Chunk::Trailer, b'\r') => Some(Chunk::TrailerLf),
            (Chunk::TrailerStart | Chunk::Trailer, _) => Some(Chunk::Trailer),
            (Chunk::TrailerLf, b'\n') => Some(Chunk::TrailerStart),
            (Chunk::EndLf, b'\n') => {
                self.state = State::Head;
                return &input[1..];
            }
            _ => None,
        };
        match next {
            Some(next) => self.state = State::Chunked(next),
            None => self.lose(),
        }
        &input[1..]
    }
}

/// Takes up to `left` bytes of body off `input`: how many are still to
/// come, and what follows them.
fn consume(left: u64, input: &[u8]) -> (u64, &[u8]) {
    let n = left.min(input.len() as u64);
    (left - n, &input[n as usize..])
}

fn head_framing(request: &httparse::Request<'_, '_>) -> HeadFraming {
    if request.method == Some("CONNECT") {
        return HeadFraming::Unfollowed;
    }
    let mut length: Option<u64> = None;
    let mut transfer_encoding = false;
    let mut chunked_last = false;
    for header in request.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("content-length") {
            let value = std::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
            match (value, length) {
                (Some(v), None) => length = Some(v),
                (Some(v), Some(seen)) if v == seen => {}
                // hyper refuses these; nothing to follow.
                _ => return HeadFraming::Unfollowed,
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
            chunked_last = header
                .value
                .rsplit(|b| *b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case("upgrade") {
            return HeadFraming::Unfollowed;
        }
    }
    match (transfer_encoding, length) {
        (true, Some(_)) => HeadFraming::Ambiguous,
        (true, None) if chunked_last && request.version == Some(1) => HeadFraming::Chunked,
        (true, None) => HeadFraming::Unfollowed,
        (false, length) => HeadFraming::Length(length.unwrap_or(0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framing() -> Framing {
        Framing::new(16 * 1024, 100)
    }

    /// Feeds `stream` in pieces of every size from 1 to its length, and
    /// checks each way ends in the same place.
    fn fed_in_pieces(stream: &[u8]) -> Framing {
        let mut whole = framing();
        whole.feed(stream);
        for size in 1..=stream.len() {
            let mut pieces = framing();
            for piece in stream.chunks(size) {
                pieces.feed(piece);
            }
            assert_eq!(pieces.state, whole.state, "pieces of {size}");
            assert_eq!(pieces.heads, whole.heads, "pieces of {size}");
            assert_eq!(pieces.smuggled, whole.smuggled, "pieces of {size}");
        }
        whole
    }

    #[test]
    fn pipelined_requests_with_bodies_end_between_requests() {
        let stream = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\
            POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello\
            POST /y HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
            5;ext=1\r\nhello\r\n10 \r\n0123456789abcdef\r\n0\r\nX-Trailer: 1\r\n\r\n\
            \r\nGET /z HTTP/1.1\r\n\r\n";
        let f = fed_in_pieces(stream);
        assert_eq!(f.heads, 4);
        assert!(f.between_requests());
        assert_eq!(f.smuggled(), None);
    }

    #[test]
    fn a_partial_head_or_body_is_not_between_requests() {
        for stream in [
            &b"GET / HTTP/1.1\r\nHost: a\r\n"[..],
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhel",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r",
        ] {
            let f = fed_in_pieces(stream);
            assert!(
                !f.between_requests(),
                "{:?}",
                String::from_utf8_lossy(stream)
            );
            assert_ne!(f.state, State::Lost);
        }
    }

    #[test]
    fn content_length_with_transfer_encoding_marks_that_request() {
        let stream = b"GET / HTTP/1.1\r\n\r\n\
            POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\ncontent-length: 4\r\n\r\n0\r\n\r\n\
            GET /admin HTTP/1.1\r\n\r\n";
        let f = fed_in_pieces(stream);
        assert_eq!(f.smuggled(), Some(1));
        assert_eq!(f.state, State::Lost);
    }

    #[test]
    fn upgrades_and_refused_framing_are_not_followed() {
        for stream in [
            &b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"[..],
            b"CONNECT a:443 HTTP/1.1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n11111111111111111\r\n",
            b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
        ] {
            let f = fed_in_pieces(stream);
            assert_eq!(
                f.state,
                State::Lost,
                "{:?}",
                String::from_utf8_lossy(stream)
            );
            assert_eq!(f.smuggled(), None);
        }
    }

    #[test]
    fn a_head_past_the_limit_is_not_followed() {
        let mut f = Framing::new(64, 100);
        f.feed(b"GET / HTTP/1.1\r\n");
        f.feed(&[b'x'; 100]);
        assert_eq!(f.state, State::Lost);
        assert!(f.partial.capacity() == 0);
    }

    #[test]
    fn more_headers_than_the_stack_holds_are_parsed_on_the_heap() {
        let mut head = String::from("POST / HTTP/1.1\r\n");
        for i in 0..80 {
            head.push_str(&format!("X-{i}: v\r\n"));
        }
        head.push_str("Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n");
        let mut f = framing();
        f.feed(head.as_bytes());
        assert_eq!(f.smuggled(), Some(0));
    }
}
