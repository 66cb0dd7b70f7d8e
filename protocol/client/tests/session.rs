//! The session loop against a real mosquitto: subscriptions come back after the broker lost
//! them, a one-off session reports an unreachable broker, a clean close leaves no last will,
//! and request/response pairs by correlation data.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rigd_client::{
    options, request, Backoff, Lifetime, Reconnect, RequestError, Session, SessionEvent,
    SessionSpec,
};
use rigd_testkit::{free_port, Mosquitto};
use rumqttc::v5::mqttbytes::v5::{LastWill, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use std::time::Duration;
use tokio::sync::mpsc::Receiver;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

fn spec(id: &str, port: u16, subscriptions: &[&str], reconnect: Reconnect) -> SessionSpec {
    SessionSpec {
        options: options(id, "127.0.0.1", port, None, Lifetime::Fresh),
        subscriptions: subscriptions
            .iter()
            .map(|t| (t.to_string(), QoS::AtLeastOnce))
            .collect(),
        requests: 16,
        events: 16,
        reconnect,
    }
}

/// The next event that `pick` takes, skipping the others; panics after [`WAIT`].
async fn next<T>(
    events: &mut Receiver<SessionEvent>,
    mut pick: impl FnMut(SessionEvent) -> Option<T>,
) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            let event = events.recv().await.expect("the session ended");
            if let Some(t) = pick(event) {
                return t;
            }
        }
    })
    .await
    .expect("no such event in time")
}

/// Waits for the next ConnAck; returns whether the broker kept the session.
async fn connected(events: &mut Receiver<SessionEvent>) -> bool {
    next(events, |e| match e {
        SessionEvent::Connected { session_present } => Some(session_present),
        _ => None,
    })
    .await
}

async fn subscribed(events: &mut Receiver<SessionEvent>) {
    next(events, |e| {
        matches!(e, SessionEvent::Subscribed).then_some(())
    })
    .await;
}

async fn message(events: &mut Receiver<SessionEvent>) -> Vec<u8> {
    next(events, |e| match e {
        SessionEvent::Message(m) => Some(m.payload.to_vec()),
        _ => None,
    })
    .await
}

/// A broker restart loses every subscription (no persistence); the session subscribes again
/// on the new ConnAck, so a message published after it still arrives.
#[tokio::test]
async fn subscriptions_come_back_after_the_broker_lost_them() {
    let mut broker = Mosquitto::start();
    let stop = CancellationToken::new();
    let backoff = Reconnect::Backoff(Backoff::new(
        Duration::from_millis(20),
        Duration::from_millis(200),
    ));
    let (_listener, mut events) = Session::start(
        spec("listener", broker.port, &["t/#"], backoff.clone()),
        stop.clone(),
    );
    let (talker, mut talk) =
        Session::start(spec("talker", broker.port, &[], backoff), stop.clone());
    subscribed(&mut events).await;
    connected(&mut talk).await;
    talker
        .client()
        .try_publish("t/a", QoS::AtLeastOnce, false, "one")
        .unwrap();
    assert_eq!(message(&mut events).await, b"one");

    broker.restart();
    next(&mut events, |e| {
        matches!(e, SessionEvent::Disconnected { .. }).then_some(())
    })
    .await;
    assert!(
        !connected(&mut events).await,
        "the restarted broker kept no session"
    );
    subscribed(&mut events).await;
    connected(&mut talk).await;
    talker
        .client()
        .try_publish("t/b", QoS::AtLeastOnce, false, "two")
        .unwrap();
    assert_eq!(message(&mut events).await, b"two");
    stop.cancel();
}

/// A session that does not reconnect ends at the first failure and says it never connected.
#[tokio::test]
async fn a_one_off_session_reports_an_unreachable_broker() {
    let port = free_port();
    let (_s, mut events) = Session::start(
        spec("nobody", port, &["t"], Reconnect::Never),
        CancellationToken::new(),
    );
    let connected = next(&mut events, |e| match e {
        SessionEvent::Failed { connected, .. } => Some(connected),
        _ => None,
    })
    .await;
    assert!(!connected);
    assert!(events.recv().await.is_none(), "the session ended");
}

/// A retained message published just before a clean close stays the retained one: the broker
/// read the DISCONNECT behind it and dropped the last will, which would have replaced it.
#[tokio::test]
async fn a_clean_close_leaves_no_last_will() {
    let broker = Mosquitto::start();
    let stop = CancellationToken::new();
    let mut s = spec("willing", broker.port, &[], Reconnect::Never);
    s.options.set_last_will(LastWill::new(
        "status/w",
        "gone",
        QoS::AtLeastOnce,
        true,
        None,
    ));
    let (session, mut events) = Session::start(s, stop.clone());
    connected(&mut events).await;
    session
        .client()
        .try_publish("status/w", QoS::AtLeastOnce, true, "clean stop")
        .unwrap();
    assert!(session.close(WAIT).await, "the broker closed the session");

    let (_reader, mut read) = Session::start(
        spec("reader", broker.port, &["status/w"], Reconnect::Never),
        stop.clone(),
    );
    assert_eq!(message(&mut read).await, b"clean stop");
    stop.cancel();
}

/// A request gets the answer carrying its own correlation data, not another one on the same
/// mailbox; with nobody answering it times out.
#[tokio::test]
async fn request_pairs_by_correlation_data() {
    let broker = Mosquitto::start();
    let stop = CancellationToken::new();
    let backoff = Reconnect::Backoff(Backoff::default());
    let (server, mut calls) =
        Session::start(spec("server", broker.port, &["ask"], backoff), stop.clone());
    subscribed(&mut calls).await;
    let answer = tokio::spawn(async move {
        let call = next(&mut calls, |e| match e {
            SessionEvent::Message(m) => Some(m),
            _ => None,
        })
        .await;
        let props = call.properties.clone().unwrap();
        let mailbox = props.response_topic.unwrap();
        let c = server.client();
        c.try_publish(&mailbox, QoS::AtLeastOnce, false, "not yours")
            .unwrap();
        let mine = PublishProperties {
            correlation_data: props.correlation_data,
            ..PublishProperties::default()
        };
        let mut body = b"re: ".to_vec();
        body.extend_from_slice(&call.payload);
        c.try_publish_with_properties(&mailbox, QoS::AtLeastOnce, false, body, mine)
            .unwrap();
    });
    let opts = options("client", "127.0.0.1", broker.port, None, Lifetime::Fresh);
    let got = request(opts, "ask", "reply/client", b"hello".to_vec(), WAIT)
        .await
        .unwrap();
    assert_eq!(&got[..], b"re: hello");
    answer.await.unwrap();

    let opts = options("client2", "127.0.0.1", broker.port, None, Lifetime::Fresh);
    let err = request(
        opts,
        "nobody-listens",
        "reply/client2",
        vec![],
        Duration::from_millis(300),
    )
    .await;
    assert!(matches!(err, Err(RequestError::Timeout(300))), "{err:?}");
    stop.cancel();
}
