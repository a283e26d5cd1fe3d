//! Packing: several JSON-RPC bodies into one queue message (a batch) within the message size limit.

/// Packs JSON-RPC bodies into messages of at most `per_message` entries and `max_bytes` bytes: a single entry
/// stays as it is, several become a batch (an array). Returns each message with the indexes of its bodies. With
/// `per_message` 1 every body is its own message, as JSON-RPC clients without batch support expect.
pub fn pack(bodies: &[String], per_message: usize, max_bytes: usize) -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    let mut group: Vec<usize> = Vec::new();
    let mut size = 1; // "["
    let flush = |group: &mut Vec<usize>, out: &mut Vec<(String, Vec<usize>)>| match group.len() {
        0 => {}
        1 => out.push((bodies[group[0]].clone(), std::mem::take(group))),
        _ => {
            let joined = group.iter().map(|&i| bodies[i].as_str()).collect::<Vec<_>>().join(",");
            out.push((format!("[{joined}]"), std::mem::take(group)));
        }
    };
    for (i, b) in bodies.iter().enumerate() {
        if !group.is_empty() && (group.len() >= per_message.max(1) || size + b.len() + 1 > max_bytes) {
            flush(&mut group, &mut out);
            size = 1;
        }
        group.push(i);
        size += b.len() + 1;
    }
    flush(&mut group, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Outcome, TaskResult};
    use crate::protocol::outbound::TaskRequest;
    use crate::protocol::results::{parse_results, result_body};
    use serde_json::{json, Value};

    #[test]
    fn pack_groups_by_count_and_size_and_keeps_single_entries_plain() {
        let bodies: Vec<String> = (0..5).map(|i| format!("{{\"n\":{i}}}")).collect();
        let one = pack(&bodies, 1, 1024);
        assert_eq!(one.len(), 5);
        assert_eq!(one[0], (bodies[0].clone(), vec![0]));
        let packed = pack(&bodies, 2, 1024);
        assert_eq!(packed.iter().map(|(_, ix)| ix.clone()).collect::<Vec<_>>(), vec![vec![0, 1], vec![2, 3], vec![4]]);
        assert_eq!(packed[0].0, r#"[{"n":0},{"n":1}]"#);
        assert_eq!(packed[2].0, bodies[4], "a lone entry is not wrapped");
        // 8 bytes per body: "[" + 3 bodies and commas is 27, over 24.
        let by_size = pack(&bodies, 10, 24);
        assert!(by_size.iter().all(|(m, _)| m.len() <= 24), "{by_size:?}");
        assert_eq!(by_size.iter().map(|(_, ix)| ix.len()).sum::<usize>(), 5);
        let v: Value = serde_json::from_str(&packed[1].0).unwrap();
        assert_eq!(v, json!([{"n": 2}, {"n": 3}]));
    }

    #[test]
    fn packed_requests_and_results_parse_entry_by_entry() {
        let reqs: Vec<String> = (1..=3)
            .map(|id| {
                TaskRequest {
                    id,
                    attempt: 1,
                    action: "noop".into(),
                    payload: json!({}),
                    timeout_secs: None,
                    deadline: None,
                }
                .to_body()
            })
            .collect();
        let mut bodies = reqs.clone();
        bodies.push(r#"{"jsonrpc":"2.0","method":"noop","params":{},"id":"x"}"#.into());
        let (msg, _) = pack(&bodies, 10, 10_000).remove(0);
        let parsed = TaskRequest::parse_many(&msg, 10_000);
        assert_eq!(parsed.iter().filter(|(_, r)| r.is_ok()).count(), 3);
        let entry: Value = serde_json::from_str(parsed[3].0.as_deref().unwrap()).unwrap();
        assert!(parsed[3].1.is_err(), "{parsed:?}");
        assert_eq!(entry, serde_json::from_str::<Value>(&bodies[3]).unwrap(), "the bad entry's own JSON");
        assert_eq!(TaskRequest::parse_many(&reqs[0], 10_000).len(), 1);
        let results: Vec<String> = (1..=2)
            .map(|id| result_body(&TaskResult { id, attempt: 1, outcome: Outcome::Success(json!(id)) }))
            .collect();
        let (msg, _) = pack(&results, 10, 10_000).remove(0);
        let parsed = parse_results(&msg, 10_000);
        assert_eq!(parsed.iter().map(|(_, r)| r.as_ref().unwrap().id).collect::<Vec<_>>(), vec![1, 2]);
    }
}
