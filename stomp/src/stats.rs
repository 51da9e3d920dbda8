//! Queue figures from ActiveMQ's statistics plugin (`<statisticsBrokerPlugin/>`
//! in `scripts/activemq.sh`): a message to
//! `ActiveMQ.Statistics.Destination.<queue>` with a `reply-to` is answered
//! with a map of that queue's counters, which a STOMP subscription with
//! `transformation:jms-map-json` receives as JSON.
//!
//! Invariant: a queue the broker does not answer for within the wait is
//! absent from the answer, never reported as empty: the plugin sends nothing
//! for a queue that does not exist, nor anything at all where it is not
//! installed.

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::{Client, Config, Frame, StompError};

/// One queue as the broker counts it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueueStats {
    /// The queue's name, without `/queue/`.
    pub queue: String,
    /// Messages in the queue now.
    pub depth: i64,
    /// Consumers subscribed now.
    pub consumers: i64,
    /// Messages sent to it since the broker started.
    pub enqueued: i64,
    /// Messages acknowledged from it since the broker started.
    pub dequeued: i64,
}

const REPLY_TO: &str = "/temp-queue/orderflow-stats";

/// Asks the broker for the figures of each of `queues` (`orders` or
/// `/queue/orders`) on a connection of its own, waiting at most `wait`.
pub async fn queue_stats(config: &Config, queues: &[&str], wait: Duration) -> Result<Vec<QueueStats>, StompError> {
    let client = Client::connect(config).await?;
    let answer = ask(&client, queues, wait).await;
    client.disconnect(Duration::from_secs(1)).await;
    answer
}

async fn ask(client: &Client, queues: &[&str], wait: Duration) -> Result<Vec<QueueStats>, StompError> {
    let names: Vec<&str> = queues.iter().map(|q| q.strip_prefix("/queue/").unwrap_or(q)).collect();
    let mut replies = client.take_messages().ok_or_else(|| StompError::Closed("messages already taken".into()))?;
    let subscribe = Frame::new("SUBSCRIBE")
        .header("destination", REPLY_TO)
        .header("id", "stats")
        .header("ack", "auto")
        .header("transformation", "jms-map-json");
    client.request(subscribe, wait).await?;
    let asks: Vec<Frame> = names
        .iter()
        .map(|name| {
            Frame::new("SEND")
                .header("destination", format!("/queue/ActiveMQ.Statistics.Destination.{name}"))
                .header("reply-to", REPLY_TO)
        })
        .collect();
    client.send(asks).await?;
    let deadline = tokio::time::Instant::now() + wait;
    let mut found: Vec<QueueStats> = Vec::new();
    while found.len() < names.len() {
        let Ok(Some(frame)) = tokio::time::timeout_at(deadline, replies.recv()).await else { break };
        if let Some(stats) = parse(&frame.body)
            && names.contains(&stats.queue.as_str())
            && !found.iter().any(|f| f.queue == stats.queue)
        {
            found.push(stats);
        }
    }
    found.sort_by_key(|s| names.iter().position(|n| *n == s.queue));
    Ok(found)
}

/// Reads the plugin's map as XStream writes it in JSON:
/// `{"map":{"entry":[{"string":"size","long":1},{"string":["destinationName","queue://orders"]},...]}}`.
fn parse(body: &[u8]) -> Option<QueueStats> {
    let json: Value = serde_json::from_slice(body).ok()?;
    let entries = json.get("map")?.get("entry")?.as_array()?;
    let text = |key: &str| {
        entries.iter().find_map(|e| match e.get("string")?.as_array()?.as_slice() {
            [k, v] if k == key => v.as_str(),
            _ => None,
        })
    };
    let number = |key: &str| {
        entries.iter().find_map(|e| {
            (e.get("string")?.as_str()? == key).then(|| ["long", "int"].iter().find_map(|t| e.get(*t)?.as_i64()))?
        })
    };
    Some(QueueStats {
        queue: text("destinationName")?.strip_prefix("queue://")?.to_string(),
        depth: number("size")?,
        consumers: number("consumerCount")?,
        enqueued: number("enqueueCount")?,
        dequeued: number("dequeueCount")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plugins_json_map_is_read() {
        let body = br#"{"map":{"entry":[{"string":"dequeueCount","long":3},{"string":"averageMessageSize","long":1033},
            {"string":["brokerId","ID:vm-1"]},{"string":"consumerCount","long":2},{"string":"memoryPercentUsage","int":0},
            {"string":"size","long":7},{"string":["destinationName","queue:\/\/orders.DLQ"]},{"string":"enqueueCount","long":10}]}}"#;
        let stats = parse(body).expect("a queue's figures");
        assert_eq!(stats, QueueStats { queue: "orders.DLQ".into(), depth: 7, consumers: 2, enqueued: 10, dequeued: 3 });
        assert_eq!(parse(b"not json"), None);
        assert_eq!(parse(br#"{"map":{"entry":[{"string":"size","long":1}]}}"#), None, "no name: not a queue's map");
    }
}
