//! Replies back to the client in request order, whatever connection produced them, with
//! pub/sub frames passed straight through and subscriptions tracked from their confirmations.

use bytes::Bytes;

use super::{Pending, Session, SessionError, Subscriptions};
use crate::redis::codec::{self, FrameScanner};
use crate::redis::shared::{Delivery, Replies};

impl Subscriptions {
    pub(super) fn active(&self) -> bool {
        !(self.channels.is_empty() && self.patterns.is_empty() && self.shard_channels.is_empty())
    }

    /// How many confirmations the (un)subscribe command `name` with `names` arguments gets.
    pub(super) fn confirmations(&self, name: &[u8], names: usize) -> usize {
        let subscribed = match name {
            _ if names > 0 => return names,
            b"unsubscribe" => self.channels.len(),
            b"punsubscribe" => self.patterns.len(),
            b"sunsubscribe" => self.shard_channels.len(),
            _ => 1,
        };
        subscribed.max(1)
    }

    fn confirm(&mut self, kind: &[u8], name: &[u8]) {
        let name = Bytes::copy_from_slice(name);
        match kind {
            b"subscribe" => self.channels.insert(name),
            b"unsubscribe" => self.channels.remove(&name),
            b"psubscribe" => self.patterns.insert(name),
            b"punsubscribe" => self.patterns.remove(&name),
            b"ssubscribe" => self.shard_channels.insert(name),
            b"sunsubscribe" => self.shard_channels.remove(&name),
            _ => false,
        };
    }
}

/// The kind and channel of an (un)subscribe confirmation (`[kind, channel, count]`).
fn confirmation(frame: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let elements = codec::array_elements(frame)?;
    let [kind, channel, count] = elements.as_slice() else { return None };
    codec::integer(count)?;
    let kind = kind.to_ascii_lowercase();
    matches!(
        kind.as_slice(),
        b"subscribe"
            | b"psubscribe"
            | b"ssubscribe"
            | b"unsubscribe"
            | b"punsubscribe"
            | b"sunsubscribe"
    )
    .then(|| (kind, channel.to_vec()))
}

impl Session {
    /// Reads complete frames off the client's own connection.
    pub(super) fn on_own_input(&mut self) -> Result<(), SessionError> {
        loop {
            let Some(own) = self.own.as_mut() else { return Ok(()) };
            let Some(len) = own.scanner.scan(&own.rbuf)? else { return Ok(()) };
            let frame = own.rbuf.split_to(len).freeze();
            self.on_backend_frame(frame)?;
        }
    }

    /// What the shared connection handed over: replies, or commands it never wrote, which are
    /// kept to send again on the next link.
    pub(super) fn on_delivery(&mut self, delivery: Delivery) -> Result<(), SessionError> {
        match delivery {
            Delivery::Replies(replies) => self.on_backend_replies(replies),
            Delivery::Unsent { wire, replies } => {
                self.resend.extend_from_slice(&wire);
                self.resend_replies += replies;
                Ok(())
            }
        }
    }

    /// Consecutive replies from the shared connection. The usual case, plain replies to plain
    /// commands, goes out as it came; anything else is taken frame by frame.
    pub(super) fn on_backend_replies(&mut self, replies: Replies) -> Result<(), SessionError> {
        let plain = !self.subscriptions.active()
            && self.pending.len() >= replies.frames
            && self.pending.iter().take(replies.frames).all(|p| matches!(p, Pending::Backend));
        if plain {
            self.pending.drain(..replies.frames);
            self.output.extend_from_slice(&replies.bytes);
            self.flush_local_replies();
            return Ok(());
        }
        let (mut scanner, mut at) = (FrameScanner::default(), 0);
        for _ in 0..replies.frames {
            let Some(len) = scanner.scan(&replies.bytes[at..])? else {
                return Err(SessionError::Desync);
            };
            self.on_backend_frame(replies.bytes.slice(at..at + len))?;
            at += len;
        }
        Ok(())
    }

    /// One frame from the backend: a push passes straight through; anything else is the reply
    /// owed next.
    pub(super) fn on_backend_frame(&mut self, frame: Bytes) -> Result<(), SessionError> {
        if frame.first() == Some(&b'>') {
            // RESP3 push: out of band, straight through; (un)subscribe confirmations count.
            if let Some((kind, channel)) = confirmation(&frame) {
                self.subscriptions.confirm(&kind, &channel);
                self.output.extend_from_slice(&frame);
                self.confirmed_subscription();
            } else {
                self.output.extend_from_slice(&frame);
            }
            return Ok(());
        }
        let expecting_pubsub = self.subscriptions.active()
            || matches!(self.pending.front(), Some(Pending::Subscribe { .. }));
        if !self.resp3 && expecting_pubsub && self.on_pubsub_frame(&frame) {
            return Ok(());
        }
        match self.pending.pop_front() {
            Some(Pending::Backend | Pending::Subscribe { .. }) => {
                self.output.extend_from_slice(&frame)
            }
            Some(Pending::Hello { resp3 }) => {
                if frame.first() != Some(&b'-') {
                    self.resp3 = resp3;
                }
                self.output.extend_from_slice(&frame);
            }
            Some(Pending::Replace(with)) => self.output.extend_from_slice(with),
            Some(Pending::Local(_)) | None => return Err(SessionError::Desync),
        }
        self.flush_local_replies();
        Ok(())
    }

    /// A RESP2 array that is a pub/sub message or (un)subscribe confirmation goes straight to
    /// the client. Returns false for other frames.
    fn on_pubsub_frame(&mut self, frame: &Bytes) -> bool {
        if let Some((kind, channel)) = confirmation(frame) {
            self.subscriptions.confirm(&kind, &channel);
            self.output.extend_from_slice(frame);
            self.confirmed_subscription();
            return true;
        }
        let Some(elements) = codec::array_elements(frame) else { return false };
        let kind = elements.first().map(|k| k.to_ascii_lowercase()).unwrap_or_default();
        if matches!(kind.as_slice(), b"message" | b"pmessage" | b"smessage") {
            self.output.extend_from_slice(frame);
            return true;
        }
        false
    }

    /// Counts a confirmation against the (un)subscribe waiting for them; the last one
    /// completes its reply.
    fn confirmed_subscription(&mut self) {
        if let Some(Pending::Subscribe { left }) = self.pending.front_mut() {
            *left = left.saturating_sub(1);
            if *left == 0 {
                self.pending.pop_front();
                self.flush_local_replies();
            }
        }
    }

    pub(super) fn flush_local_replies(&mut self) {
        while let Some(Pending::Local(_)) = self.pending.front() {
            if let Some(Pending::Local(bytes)) = self.pending.pop_front() {
                self.output.extend_from_slice(&bytes);
            }
        }
    }
}
