//! frp's message transporter for the NAT hole exchange: a request goes out on the control
//! connection and the `NatHoleResp` with the same transaction id comes back to its caller.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::msg::{Message, NatHoleResp};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TransportError {
    #[error("no connection to the server")]
    NoSession,
    #[error("context deadline exceeded")]
    Timeout,
}

/// Shared by the client's proxies and visitors; the control session sets its sender.
#[derive(Default)]
pub struct Transporter {
    sender: Mutex<Option<mpsc::Sender<Message>>>,
    waiting: Mutex<HashMap<String, oneshot::Sender<NatHoleResp>>>,
}

impl Transporter {
    pub fn set_sender(&self, tx: Option<mpsc::Sender<Message>>) {
        *self.sender.lock().unwrap() = tx;
    }

    /// Sends `m` on the control connection.
    pub fn send(&self, m: Message) -> Result<(), TransportError> {
        let tx = self.sender.lock().unwrap().clone();
        match tx {
            Some(tx) => tx.try_send(m).map_err(|_| TransportError::NoSession),
            None => Err(TransportError::NoSession),
        }
    }

    /// Sends `m` and waits up to `timeout` for the NatHoleResp of transaction `lane`.
    pub async fn request(
        &self,
        m: Message,
        lane: &str,
        timeout: Duration,
    ) -> Result<NatHoleResp, TransportError> {
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().unwrap().insert(lane.to_string(), tx);
        let r = match self.send(m) {
            Ok(()) => match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(resp)) => Ok(resp),
                Ok(Err(_)) => Err(TransportError::NoSession),
                Err(_) => Err(TransportError::Timeout),
            },
            Err(e) => Err(e),
        };
        self.waiting.lock().unwrap().remove(lane);
        r
    }

    /// A NatHoleResp arrived on the control connection; false if nobody waits for it.
    pub fn dispatch(&self, resp: NatHoleResp) -> bool {
        let waiter = self.waiting.lock().unwrap().remove(&resp.transaction_id);
        match waiter {
            Some(tx) => tx.send(resp).is_ok(),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::NatHoleVisitor;

    #[tokio::test]
    async fn responses_find_their_request_by_transaction_id() {
        let t = std::sync::Arc::new(Transporter::default());
        let req = Message::NatHoleVisitor(NatHoleVisitor::default());
        assert_eq!(
            t.request(req.clone(), "x", Duration::from_millis(10)).await,
            Err(TransportError::NoSession)
        );
        let (tx, mut rx) = mpsc::channel(4);
        t.set_sender(Some(tx));
        let t2 = t.clone();
        let waiter =
            tokio::spawn(async move { t2.request(req, "lane1", Duration::from_secs(5)).await });
        assert!(rx.recv().await.is_some());
        // An unknown lane is not delivered; the right one is.
        assert!(!t.dispatch(NatHoleResp {
            transaction_id: "other".into(),
            ..Default::default()
        }));
        while !t.dispatch(NatHoleResp {
            transaction_id: "lane1".into(),
            sid: "s".into(),
            ..Default::default()
        }) {
            tokio::task::yield_now().await;
        }
        assert_eq!(waiter.await.unwrap().unwrap().sid, "s");
        let r = t
            .request(
                Message::NatHoleVisitor(NatHoleVisitor::default()),
                "l2",
                Duration::from_millis(20),
            )
            .await;
        assert_eq!(r, Err(TransportError::Timeout));
        assert!(t.waiting.lock().unwrap().is_empty());
    }
}
