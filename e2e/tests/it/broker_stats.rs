//! The broker's own queue figures, asked of its statistics plugin over STOMP.

use std::time::Duration;

use e2e::broker::shared_broker_url;
use stomp::{Client, Config, Frame};

fn config() -> Config {
    Config::from_url(&shared_broker_url()).expect("the test broker's URL")
}

#[tokio::test]
async fn the_broker_counts_its_queues_and_says_nothing_of_one_that_does_not_exist() {
    let queue = e2e::unique_queue();
    let dlq = format!("{queue}.DLQ");
    let client = Client::connect(&config()).await.unwrap();
    let three = (0..3).map(|i| Frame::new("SEND").header("destination", queue.as_str()).body(format!("m{i}")));
    let one = Frame::new("SEND").header("destination", dlq.as_str()).body("dead");
    for receipt in client.send_with_receipts(three.chain([one])).await.unwrap() {
        receipt.wait(Duration::from_secs(10)).await.unwrap();
    }
    client.disconnect(Duration::from_secs(1)).await;

    let missing = format!("{queue}.none");
    let stats = stomp::queue_stats(&config(), &[&queue, &missing, &dlq], Duration::from_secs(3)).await.unwrap();
    let name = queue.strip_prefix("/queue/").unwrap();
    let figures: Vec<(&str, i64, i64, i64, i64)> =
        stats.iter().map(|s| (s.queue.as_str(), s.depth, s.consumers, s.enqueued, s.dequeued)).collect();
    let dead = format!("{name}.DLQ");
    assert_eq!(figures, [(name, 3, 0, 3, 0), (dead.as_str(), 1, 0, 1, 0)], "only the queues that exist, in order");
}
