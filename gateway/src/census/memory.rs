//! The in-process census: the embedded default, one pod.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use protocol::Topic;

use super::{Census, CensusError};

#[derive(Debug, Clone, Default)]
pub struct MemoryCensus {
    topics: Arc<Mutex<HashMap<Topic, HashMap<String, usize>>>>,
}

impl Census for MemoryCensus {
    async fn report(&self, pod: &str, counts: &[(Topic, usize)]) -> Result<(), CensusError> {
        let mut topics = self.topics.lock().expect("census lock");
        for (topic, n) in counts {
            let pods = topics.entry(topic.clone()).or_default();
            if *n == 0 {
                pods.remove(pod);
                if pods.is_empty() {
                    topics.remove(topic);
                }
            } else {
                pods.insert(pod.to_owned(), *n);
            }
        }
        Ok(())
    }

    async fn counts(&self, topic: &Topic) -> Result<HashMap<String, usize>, CensusError> {
        let topics = self.topics.lock().expect("census lock");
        Ok(topics.get(topic).cloned().unwrap_or_default())
    }
}
