//! One stream through the driver: the proxy's callbacks in, the machine's steps carried out
//! through [`StreamIo`]. This is the one applier: the proxy-wasm adapter and the test kit's
//! `Envoy` both go through it.

use super::{Stamp, Worker};
use crate::exchange::{Edit, Event, Exchange, Flow, ReadBody, Reply, Step, Value};
use crate::host::{Attributes, Headers, Host};
use crate::metrics::StoreStat;
use crate::record::Record;
use crate::session_id::SessionId;
use crate::store::etcd::{self, fallback, Call, Flight};
use crate::store::{Lookup, Next, StoreOp, StoreResult};
use log::{error, warn};

/// Most store operations one event may chain (a guard against a machine that loops).
const MAX_CHAINED_OPS: usize = 8;

/// Largest list of edits a worker keeps for the next step.
const MAX_SPARE_EDITS: usize = 8;

/// Which half of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The request (decoding).
    Request,
    /// The response (encoding).
    Response,
}

/// What the proxy does with the headers or data of the callback that returned it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Let them go on.
    Continue,
    /// Hold them (a body is buffered; a call or a local reply is under way).
    Pause,
    /// Hold the request's headers, and go on showing the body (Envoy's `StopIteration` for
    /// headers); only a host whose `Capabilities::hold_headers` says it can is asked.
    HoldHeaders,
}

/// What the driver asks of the host for one stream.
pub trait StreamIo {
    /// Sets (replacing every copy) or removes (`None`) a header of one side.
    fn set_header(&mut self, side: Side, name: &str, value: Option<&str>);
    /// Adds a header to one side, which does not carry one of that name. The value is visible
    /// ASCII (a session ID, a constant): bytes, so that no host checks it for UTF-8 again.
    fn add_header(&mut self, side: Side, name: &str, value: &[u8]);
    /// Answers the stream locally.
    fn respond(&mut self, reply: &Reply);
    /// Replaces the response body held so far.
    fn replace_body(&mut self, body: &[u8]);
    /// Makes a gRPC call whose answer comes to this stream: the host's token for it, or the
    /// gRPC status to report when it cannot be made.
    fn call(
        &mut self,
        upstream: &super::Upstream,
        call: &Call,
        timeout_ms: u64,
    ) -> Result<u32, u32>;
    /// Lets a side held for a call go on.
    fn resume(&mut self, side: Side);
    /// Records a fact about this request for access logs and traces (`session_facts`).
    fn set_fact(&mut self, name: &str, value: &str);
}

/// One stream's state in the driver: the request machine, and the store operation under way.
#[derive(Debug, Default)]
pub struct Stream {
    exchange: Exchange,
    /// The etcd operation in flight.
    flight: Option<Box<Flight>>,
    /// The lookup under way: what to cache its answer under.
    lookup: Option<(Stamp, SessionId)>,
    /// The side held for a call, and the call's token.
    held: Option<(Side, u32)>,
    /// One of its hooks failed ([`Stream::fail`]): every hook after passes.
    failed: bool,
    /// Its last hook ([`Worker::stream_done`]) has begun: nothing can be sent on it any more.
    over: bool,
}

/// A hook a host may skip when its stream has nothing to do in it ([`Stream::passes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// [`Worker::body`] and [`Worker::trailers`] of the request.
    RequestBody,
    /// [`Worker::response_headers`].
    ResponseHeaders,
    /// [`Worker::body`] and [`Worker::trailers`] of the response.
    ResponseBody,
    /// [`Worker::stream_done`].
    Done,
}

impl Stream {
    /// True when the worker's `hook` would let this stream go on without reading or doing
    /// anything: a host may then answer Continue at once, without the worker (on the hot path,
    /// every hook after the request headers).
    pub fn passes(&self, hook: Hook) -> bool {
        if self.failed {
            return true;
        }
        let free = self.held.is_none();
        match hook {
            Hook::RequestBody => free && !self.exchange.reads_request_body(),
            Hook::ResponseHeaders => !self.exchange.reads_response_headers(),
            Hook::ResponseBody => free && !self.exchange.reads_response_body(),
            Hook::Done => !(free && self.exchange.holds_reservation()),
        }
    }

    /// One of this stream's hooks failed (a native module caught a panic in it; its state is
    /// what the last completed step left): from now on every hook passes, and the driver does
    /// nothing more on it. The answer to send, when one still can be: a JSON-RPC 500 the first
    /// time, unless the stream's last hook had begun (its response is over).
    pub fn fail(&mut self) -> Option<Reply> {
        let answer = !(self.failed || self.over);
        self.failed = true;
        answer.then(Reply::internal_error)
    }
}

/// A step, and whether a call must be made first (`Stream::flight`).
struct Driven {
    step: Step,
    call: bool,
}

impl From<Step> for Driven {
    fn from(step: Step) -> Driven {
        Driven { step, call: false }
    }
}

impl<H: Host> Worker<H> {
    /// The request headers.
    pub fn request_headers(
        &self,
        stream: &mut Stream,
        headers: &dyn Headers,
        attributes: &dyn Attributes,
        end_of_stream: bool,
        io: &mut impl StreamIo,
    ) -> Action {
        let event = Event::RequestHeaders {
            headers,
            attributes,
            end_of_stream,
        };
        self.feed(stream, Side::Request, event, io)
    }

    /// Body data of one side: `size()` bytes (the request's: buffered so far; the response's:
    /// in this chunk, or all held so far when paused), read by `body` if needed (both asked
    /// only when the machine reads this body: a host may pay to learn either).
    pub fn body<'b>(
        &self,
        stream: &mut Stream,
        side: Side,
        size: &'b dyn Fn() -> usize,
        end_of_stream: bool,
        body: &'b ReadBody<'b>,
        io: &mut impl StreamIo,
    ) -> Action {
        let hook = match side {
            Side::Request => Hook::RequestBody,
            Side::Response => Hook::ResponseBody,
        };
        if stream.passes(hook) {
            return Action::Continue;
        }
        if stream.held.is_some() {
            return Action::Pause; // held until etcd answers
        }
        let event = match side {
            Side::Request => Event::RequestBody {
                size,
                end_of_stream,
                body,
            },
            Side::Response => Event::ResponseBody {
                size,
                end_of_stream,
                body,
            },
        };
        self.feed(stream, side, event, io)
    }

    /// The trailers of either side: that side's body is over. An HTTP/2 or HTTP/3 message may
    /// end with a trailers frame instead of a data frame that ends the stream, and then no
    /// body call says `end_of_stream`: the body held so far (`size`, `body`) is the whole
    /// body, and it is judged as if its last chunk had said so. Otherwise a body followed by
    /// trailers would pass unread (an `initialize` unmanaged, a sessionless call let through).
    pub fn trailers<'b>(
        &self,
        stream: &mut Stream,
        side: Side,
        size: &'b dyn Fn() -> usize,
        body: &'b ReadBody<'b>,
        io: &mut impl StreamIo,
    ) -> Action {
        self.body(stream, side, size, true, body, io)
    }

    /// The response headers.
    pub fn response_headers(
        &self,
        stream: &mut Stream,
        headers: &dyn Headers,
        attributes: &dyn Attributes,
        end_of_stream: bool,
        io: &mut impl StreamIo,
    ) -> Action {
        if stream.passes(Hook::ResponseHeaders) {
            return Action::Continue; // the hot path: nothing to do
        }
        let event = Event::ResponseHeaders {
            headers,
            attributes,
            end_of_stream,
        };
        self.feed(stream, Side::Response, event, io)
    }

    /// The stream is over (completed, reset or refused): a reservation still held is freed.
    /// One that waits for etcd is left to its call's answer.
    pub fn stream_done(&self, stream: &mut Stream, io: &mut impl StreamIo) {
        stream.over = true;
        if !stream.passes(Hook::Done) {
            let _ = self.feed(stream, Side::Response, Event::Done, io);
        }
    }

    /// The answer to a call this stream made: its gRPC status, and its message when that is 0.
    pub fn stream_call_answered(
        &self,
        stream: &mut Stream,
        token: u32,
        status: u32,
        message: &[u8],
        io: &mut impl StreamIo,
    ) {
        let Some((side, held)) = stream.held else {
            return;
        };
        if held != token || stream.failed {
            return;
        }
        stream.held = None;
        let driven = self.on_reply(stream, etcd::Reply::of(status, message));
        if self.carry_out(stream, side, driven, io) == Action::Continue {
            io.resume(side);
        }
    }

    fn feed(
        &self,
        stream: &mut Stream,
        side: Side,
        event: Event<'_>,
        io: &mut impl StreamIo,
    ) -> Action {
        if stream.failed {
            return Action::Continue;
        }
        let step = self.with_input(|input| stream.exchange.step(input, event));
        let driven = self.drive(stream, step);
        self.carry_out(stream, side, driven, io)
    }

    /// Runs the store operations the machine asks for, feeding their answers back, until it
    /// continues, pauses, answers, or waits for a call.
    fn drive(&self, stream: &mut Stream, mut step: Step) -> Driven {
        for _ in 0..MAX_CHAINED_OPS {
            if let Some(counts) = stream.exchange.take_counts() {
                counts.iter().for_each(|(event, n)| self.count(event, n));
            }
            let op = match step.flow {
                Flow::Store => match stream.exchange.take_store_op() {
                    Some(op) => op,
                    None => {
                        error!("the machine asked for a store operation it does not hold");
                        step.flow = Flow::Continue;
                        return step.into();
                    }
                },
                _ => return step.into(),
            };
            let mut next = match self.answer_cached(stream, &op) {
                Some(next) => next,
                None => {
                    let result = match self.backend.begin(&self.host, self.limits, op) {
                        Next::Done(result) => result,
                        Next::Unavailable(op) => self.unavailable(op),
                        Next::Call(flight) => {
                            stream.flight = Some(flight);
                            step.flow = Flow::Pause;
                            return Driven { step, call: true };
                        }
                    };
                    self.answer(stream, result)
                }
            };
            step.edits.append(&mut next.edits);
            step.flow = next.flow;
        }
        if matches!(step.flow, Flow::Store) {
            error!("store operations chained past {MAX_CHAINED_OPS}; letting traffic go on");
            step.flow = Flow::Continue;
        }
        step.into()
    }

    /// The machine's next step when the worker's cache answers `op` (a lookup of a session it
    /// holds); `None` when the store must. A lookup the cache cannot answer notes the epoch
    /// first, so an end between this and the store's read empties the cache.
    fn answer_cached(&self, stream: &mut Stream, op: &StoreOp) -> Option<Step> {
        let StoreOp::Lookup {
            id,
            identity,
            now_ms,
        } = op
        else {
            return None;
        };
        let stamp = self.stamp();
        let exchange = &mut stream.exchange;
        let live =
            |record: &Record| self.with_input(|input| exchange.step(input, Event::Live(record)));
        let step = self.cached(stamp, id, identity.as_deref(), *now_ms, live);
        if step.is_none() {
            stream.lookup = Some((stamp, *id));
        }
        step
    }

    /// Feeds a store's answer to the machine (caching a looked-up session first).
    fn answer(&self, stream: &mut Stream, result: StoreResult) -> Step {
        if let (Some((stamp, id)), StoreResult::Lookup(Lookup::Live(record, _))) =
            (stream.lookup.take(), &result)
        {
            self.remember(stamp, &id, record);
        }
        self.with_input(|input| stream.exchange.step(input, Event::Stored(result)))
    }

    /// Feeds the answer to the etcd call a stream waits for.
    fn on_reply(&self, stream: &mut Stream, reply: etcd::Reply<'_>) -> Driven {
        let (Some(remote), Some(flight)) = (self.backend.remote(), stream.flight.take()) else {
            return Step::from(Flow::Continue).into();
        };
        if let etcd::Reply::Failed(status) = reply {
            self.count_store(StoreStat::Errors);
            let call = flight.call();
            warn!(
                "etcd {}/{} failed (gRPC status {status})",
                call.service, call.method
            );
        }
        let result = match remote.advance(flight, reply, &self.limits, self.host.now_ms()) {
            Next::Call(flight) => {
                if matches!(reply, etcd::Reply::Failed(_)) {
                    self.count_store(StoreStat::Retries);
                }
                stream.flight = Some(flight);
                return Driven {
                    step: Flow::Pause.into(),
                    call: true,
                };
            }
            Next::Done(result) => result,
            Next::Unavailable(op) => self.unavailable(op),
        };
        let step = self.answer(stream, result);
        self.drive(stream, step)
    }

    /// What etcd's silence means for `op`: 503 (`unavailable: reject`), or this Envoy's
    /// memory (`unavailable: local`).
    fn unavailable(&self, op: StoreOp) -> StoreResult {
        let Some(remote) = self
            .backend
            .remote()
            .filter(|r| r.config().fall_back_to_local)
        else {
            return StoreResult::Unavailable;
        };
        self.count_store(StoreStat::Fallbacks);
        let Ok(mut cache) = self.cache.try_borrow_mut() else {
            return StoreResult::Unavailable;
        };
        let epoch = self.host.epoch().unwrap_or(0);
        let answer = fallback::answer(remote, &mut cache, &self.host, epoch, &self.limits, op);
        drop(cache);
        if answer.stale {
            self.count_store(StoreStat::StaleServes);
        }
        if let Some((id, record)) = &answer.made {
            self.cache_put(epoch, id, record);
        }
        answer.result
    }

    /// Carries out a step: header edits, the call it waits for, then the flow. A call that
    /// cannot be made is answered as failed at once (retried, or etcd is unavailable).
    fn carry_out(
        &self,
        stream: &mut Stream,
        side: Side,
        mut driven: Driven,
        io: &mut impl StreamIo,
    ) -> Action {
        loop {
            let mut edits = std::mem::take(&mut driven.step.edits);
            for edit in edits.drain(..) {
                match edit {
                    Edit::Request(name, value) => io.set_header(Side::Request, name, Some(&value)),
                    Edit::Response(name, value) => {
                        io.set_header(Side::Response, name, value.as_deref())
                    }
                    Edit::ResponseAdd(name, Value::Text(text)) => {
                        io.add_header(Side::Response, name, text.as_bytes())
                    }
                    Edit::ResponseAdd(name, Value::Session(id)) => {
                        io.add_header(Side::Response, name, id.encoded().as_bytes())
                    }
                    Edit::Affinity(value) => {
                        if let Some(name) = &self.config.affinity_header {
                            io.set_header(Side::Request, name, value.as_deref());
                        }
                    }
                    Edit::Fact(name, value) => io.set_fact(name, &value),
                }
            }
            // The list is kept for the next step's edits (a small one: a large one is freed).
            if (1..=MAX_SPARE_EDITS).contains(&edits.capacity()) {
                self.spare_edits.set(edits);
            }
            if driven.call {
                let Some(flight) = &stream.flight else {
                    return Action::Continue;
                };
                self.count_store(StoreStat::Calls);
                let timeout = self.call_timeout_ms(flight);
                match io.call(&self.upstream, flight.call(), timeout) {
                    Ok(token) => {
                        stream.held = Some((side, token));
                        return Action::Pause;
                    }
                    Err(status) => {
                        driven = self.on_reply(stream, etcd::Reply::Failed(status));
                        continue;
                    }
                }
            }
            return match driven.step.flow {
                Flow::Continue => Action::Continue,
                Flow::Pause => Action::Pause,
                Flow::HoldHeaders => Action::HoldHeaders,
                Flow::Respond(reply) => {
                    io.respond(&reply);
                    Action::Pause
                }
                Flow::Replace(body) => {
                    io.replace_body(&body);
                    Action::Continue
                }
                Flow::Store => Action::Continue, // drive() never leaves one
            };
        }
    }

    /// The timeout of the call a flight is about to make: what is left of its operation's
    /// deadline, and half of the deadline at most, so a call stuck on a member that lost its
    /// leader leaves time for another member.
    fn call_timeout_ms(&self, flight: &Flight) -> u64 {
        match self.backend.remote() {
            Some(remote) => remote
                .time_left(flight, self.host.now_ms())
                .min(remote.config().timeout_ms / 2)
                .max(10),
            None => 1000,
        }
    }
}
