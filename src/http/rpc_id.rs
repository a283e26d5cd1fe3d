//! JSON-RPC ids kept byte-exact (issue 21). `serde_json::Value` keeps a number as i64, u64 or f64, so an id beyond
//! them (`123456789012345678901234567890`) or one f64 cannot print back (`1.10`, `1e2`) would come back changed,
//! against the spec's "the same value as the id of the Request Object". The dispatcher works on `Value`s; this reads
//! every element's id once more as raw JSON text, and an answer whose id would print differently gets the raw text.
//! (Not `arbitrary_precision`: that feature changes every `Number` of the crate.)

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// The ids of one body's elements as sent (None: absent, null, or the element is no object).
pub struct RawIds(Vec<Option<Box<RawValue>>>);

#[derive(Deserialize)]
struct IdOnly<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
}

fn id_of(element: &str) -> Option<Box<RawValue>> {
    // A duplicate "id" member fails here: the Value's (last) id is answered then, as before.
    serde_json::from_str::<IdOnly>(element).ok()?.id.map(RawValue::to_owned)
}

impl RawIds {
    /// Reads the ids of a body that is one element or a batch; empty if it is not JSON.
    pub fn read(body: &[u8]) -> RawIds {
        let Ok(text) = std::str::from_utf8(body) else { return RawIds(Vec::new()) };
        match text.trim_start().as_bytes().first() {
            Some(b'[') => match serde_json::from_str::<Vec<&RawValue>>(text) {
                Ok(elements) => RawIds(elements.iter().map(|e| id_of(e.get())).collect()),
                Err(_) => RawIds(Vec::new()),
            },
            _ => RawIds(vec![id_of(text)]),
        }
    }

    /// The raw id of element `i` (0 for a single request).
    pub fn get(&self, i: usize) -> Option<&RawValue> {
        self.0.get(i).and_then(|r| r.as_deref())
    }
}

/// Serialises one answer object. When `raw` is a number whose text differs from the answer's parsed id, the raw
/// text is written in its place; anything else is written as it is.
pub fn answer_bytes(answer: &Value, raw: Option<&RawValue>) -> Vec<u8> {
    if let (Value::Object(o), Some(raw)) = (answer, raw) {
        let is_number = raw.get().starts_with(|c: char| c == '-' || c.is_ascii_digit());
        if is_number && o.get("id").is_some_and(|id| id.to_string() != raw.get()) {
            #[derive(serde::Serialize)]
            struct WithRawId<'a> {
                #[serde(flatten)]
                rest: Map<String, Value>,
                id: &'a RawValue,
            }
            let mut rest = o.clone();
            rest.remove("id");
            return serde_json::to_vec(&WithRawId { rest, id: raw }).unwrap_or_default();
        }
    }
    serde_json::to_vec(answer).unwrap_or_default()
}

/// Joins answers of a batch into one JSON array.
pub fn join(answers: Vec<Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::with_capacity(answers.iter().map(|a| a.len() + 1).sum::<usize>() + 1);
    out.push(b'[');
    for (i, a) in answers.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&a);
    }
    out.push(b']');
    out
}

/// The fuzz target `rpc_params` (fuzz/): the layer of `POST /rpc` before any store call. Panics only on a broken
/// invariant: an answer that is not JSON, an id that does not come back byte-exact, a budget that does not hold.
pub fn fuzz_one(body: &[u8]) {
    let ids = RawIds::read(body);
    let Ok(v) = serde_json::from_slice::<Value>(body) else { return };
    let elements = match v {
        Value::Array(a) => a,
        single => vec![single],
    };
    let _ = super::budget::check_batch(&elements);
    for (i, e) in elements.into_iter().enumerate() {
        let req = crate::protocol::parse_request(e);
        let (answer, raw) = match req {
            Ok(r) => {
                if let Some(action) = r.method.strip_prefix(crate::protocol::SUBMIT_PREFIX) {
                    if let Ok(a) = crate::domain::Action::parse(action) {
                        let _ = crate::protocol::submit_task(a, r.params.clone(), Default::default(), 262_144);
                    }
                }
                let _ = crate::protocol::params::Params::new(r.params).and_then(|p| p.finish());
                match r.id {
                    Some(id) => (serde_json::json!({"jsonrpc": "2.0", "result": null, "id": id}), ids.get(i)),
                    None => continue,
                }
            }
            Err((e, id)) => (serde_json::json!({"jsonrpc": "2.0", "error": e.to_value(), "id": id}), ids.get(i)),
        };
        let bytes = answer_bytes(&answer, raw);
        let back: Value = serde_json::from_slice(&bytes).expect("an answer is JSON");
        if let (Some(raw), Some(id)) = (raw, back.get("id")) {
            if !id.is_null() && raw.get().starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
                let text = String::from_utf8_lossy(&bytes);
                let (a, b) = (format!("\"id\":{},", raw.get()), format!("\"id\":{}}}", raw.get()));
                assert!(text.contains(&a) || text.ends_with(&b), "id changed: {text}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(body: &str) -> String {
        let ids = RawIds::read(body.as_bytes());
        let v: Value = serde_json::from_str(body).unwrap();
        String::from_utf8(answer_bytes(&serde_json::json!({"jsonrpc": "2.0", "result": 19, "id": v["id"]}), ids.get(0)))
            .unwrap()
    }

    #[test]
    fn ids_come_back_as_sent() {
        for id in
            ["1", "-7", "\"1\"", "null", "123456789012345678901234567890", "1.10", "1e2", "-0", "18446744073709551616"]
        {
            let got = answer(&format!(r#"{{"jsonrpc":"2.0","method":"m","id":{id}}}"#));
            let (a, b) = (format!("\"id\":{id},"), format!("\"id\":{id}}}"));
            assert!(got.contains(&a) || got.ends_with(&b), "{id} -> {got}");
        }
    }
}
