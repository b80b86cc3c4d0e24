//! The compiled core of the online trainer's sample decoder (`trainer/sample_decoder.py`).
//!
//! Per sample the trainer needs ~22 ids turned into table rows (the user, the target item
//! and up to `history_len` history items). In CPython each id is a fresh string object,
//! hashed and looked up in a dict: with the JSON decode that cost about a quarter of the
//! id-only ranker's training step. Here a batch of records is parsed with the ids borrowed
//! from the record bytes, the rows come from Rust hash maps, and the columns come back as
//! little-endian byte buffers that numpy wraps without a copy.
//!
//! Records in the exact layout pydantic writes (what the stream processor sends) are read
//! by a small hand parser (`parse_layout`); any other layout goes through serde_json.
//!
//! **Only the strict JSON form** of a `TrainingSample` is taken here: every field with its
//! exact JSON type (strings, integers, numbers, `true`/`false`), no unknown or repeated
//! fields, `context` an object of strings and numbers. pydantic accepts every such record,
//! with the same values. A batch holding any other record (malformed, a tombstone, or
//! merely lax, such as `"ts": "5"`) is refused as a whole (`decode` returns `None`,
//! with no state changed); the Python side then validates each record with the pydantic
//! schema, rejects the bad ones with pydantic's reason, re-encodes the rest in the strict
//! form and decodes that.
//!
//! **State** (owned here so that no id becomes a Python object): the id -> row maps of the
//! user and item tables (row r holds the r-th id; 0 is padding) and the recent sample ids
//! for de-duplication (a FIFO window).
use std::borrow::Cow;
use std::collections::VecDeque;

use foldhash::{HashMap, HashSet};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyList};
use serde::Deserialize;

/// An id string, borrowed from the record unless it holds escapes.
#[derive(Deserialize)]
struct Id<'a>(#[serde(borrow)] Cow<'a, str>);

/// `TrainingSample` (streams/events.py) in its strict JSON form.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Sample<'a> {
    #[serde(default = "schema_version_1")]
    schema_version: u64,
    #[serde(borrow)]
    sample_id: Cow<'a, str>,
    #[serde(borrow)]
    user_id: Cow<'a, str>,
    #[serde(borrow)]
    item_id: Cow<'a, str>,
    label: u8,
    ts: f64,
    #[serde(borrow)]
    history: Vec<Id<'a>>,
    item_interactions: u64,
    #[serde(default)]
    item_age_s: Option<f64>,
    #[allow(dead_code)] // validated only: the trainer does not use it
    item_known: bool,
    #[serde(default)]
    #[allow(dead_code)]
    context: std::collections::HashMap<String, Scalar>,
}

fn schema_version_1() -> u64 {
    1
}

/// A `context` value: pydantic's `str | int | float` (not a boolean, null, array or object).
/// Validated and dropped: the trainer ignores `context`.
#[derive(Deserialize)]
#[serde(untagged)]
#[allow(dead_code)]
enum Scalar {
    Text(String),
    Int(i64),
    UInt(u64),
    Float(f64),
}

/// Parses one record in the strict form, or says why it is not in it.
fn parse_strict(raw: &[u8]) -> Result<Sample<'_>, String> {
    if let Some(sample) = parse_layout(raw) {
        return Ok(sample);
    }
    let sample: Sample = serde_json::from_slice(raw).map_err(|e| e.to_string())?;
    if sample.schema_version != 1 {
        return Err(format!("schema_version {} is not 1", sample.schema_version));
    }
    if sample.label > 1 {
        return Err(format!("label {} is not 0 or 1", sample.label));
    }
    Ok(sample)
}

/// The record exactly as pydantic's `model_dump_json` writes a TrainingSample (the fields
/// in declared order, no whitespace, strings without escapes, `context` empty), parsed by
/// hand: ~4x faster than serde_json here. None for anything else, which serde_json then
/// judges; so this path only ever takes records serde_json takes, with the same values.
fn parse_layout(raw: &[u8]) -> Option<Sample<'_>> {
    let mut c = Cursor { b: raw, at: 0 };
    c.lit(b"{\"schema_version\":1,\"sample_id\":")?;
    let sample_id = c.string()?;
    c.lit(b",\"user_id\":")?;
    let user_id = c.string()?;
    c.lit(b",\"item_id\":")?;
    let item_id = c.string()?;
    c.lit(b",\"label\":")?;
    let label = match c.number()? {
        "0" => 0,
        "1" => 1,
        _ => return None,
    };
    c.lit(b",\"ts\":")?;
    let ts = c.float()?;
    c.lit(b",\"history\":[")?;
    let mut history = Vec::new();
    if !c.eat(b"]") {
        loop {
            history.push(Id(Cow::Borrowed(c.string()?)));
            if c.eat(b"]") {
                break;
            }
            c.lit(b",")?;
        }
    }
    c.lit(b",\"item_interactions\":")?;
    let item_interactions = c.number()?.parse().ok()?; // digits only: no sign, point, exponent
    c.lit(b",\"item_age_s\":")?;
    let item_age_s = if c.eat(b"null") {
        None
    } else {
        Some(c.float()?)
    };
    c.lit(b",\"item_known\":")?;
    let item_known = if c.eat(b"true") {
        true
    } else {
        c.eat(b"false").then_some(false)?
    };
    c.lit(b",\"context\":{}}")?;
    (c.at == raw.len()).then_some(Sample {
        schema_version: 1,
        sample_id: Cow::Borrowed(sample_id),
        user_id: Cow::Borrowed(user_id),
        item_id: Cow::Borrowed(item_id),
        label,
        ts,
        history,
        item_interactions,
        item_age_s,
        item_known,
        context: Default::default(),
    })
}

/// A read position in one record, for `parse_layout`.
struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    /// Skips `s` if the record continues with it.
    fn eat(&mut self, s: &[u8]) -> bool {
        let found = self.b[self.at..].starts_with(s);
        if found {
            self.at += s.len();
        }
        found
    }

    fn lit(&mut self, s: &[u8]) -> Option<()> {
        self.eat(s).then_some(())
    }

    /// A string without escapes or control characters, valid UTF-8.
    fn string(&mut self) -> Option<&'a str> {
        self.lit(b"\"")?;
        let rest = &self.b[self.at..];
        let end = rest
            .iter()
            .position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
        if rest[end] != b'"' {
            return None;
        }
        let text = std::str::from_utf8(&rest[..end]).ok()?;
        self.at += end + 1;
        Some(text)
    }

    /// A token of JSON's number grammar: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
    fn number(&mut self) -> Option<&'a str> {
        let (b, start) = (self.b, self.at);
        let digits = |mut i: usize| {
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            i
        };
        let mut i = start + usize::from(b.get(start) == Some(&b'-'));
        i = match b.get(i)? {
            b'0' => i + 1,
            b'1'..=b'9' => digits(i + 1),
            _ => return None,
        };
        if b.get(i) == Some(&b'.') {
            let end = digits(i + 1);
            if end == i + 1 {
                return None;
            }
            i = end;
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1 + usize::from(matches!(b.get(i + 1), Some(b'+' | b'-')));
            let end = digits(i);
            if end == i {
                return None;
            }
            i = end;
        }
        self.at = i;
        std::str::from_utf8(&b[start..i]).ok()
    }

    /// A finite number as serde_json reads it into an f64 (an integer token via i64/u64).
    fn float(&mut self) -> Option<f64> {
        let token = self.number()?;
        let value = if token.bytes().any(|c| matches!(c, b'.' | b'e' | b'E')) {
            token.parse::<f64>().ok()?
        } else if let Ok(v) = token.parse::<i64>() {
            v as f64
        } else {
            token.parse::<u64>().ok()? as f64
        };
        value.is_finite().then_some(value)
    }
}

/// id -> row of one growing table (rows from 1; an unknown id takes the next row).
struct RowIndex {
    rows: HashMap<String, i64>,
}

impl RowIndex {
    fn new(ids: Vec<String>) -> Self {
        let rows = ids.into_iter().zip(1..).collect();
        RowIndex { rows }
    }

    fn row(&mut self, id: &str, added: &mut Vec<String>) -> i64 {
        if let Some(&row) = self.rows.get(id) {
            return row;
        }
        let row = self.rows.len() as i64 + 1;
        self.rows.insert(id.to_owned(), row);
        added.push(id.to_owned());
        row
    }
}

/// The newest `size` sample ids, oldest first, for de-duplication.
struct RecentIds {
    order: VecDeque<String>,
    members: HashSet<String>,
    size: usize,
}

impl RecentIds {
    fn new(size: usize, ids: Vec<String>) -> Self {
        let skip = ids.len().saturating_sub(size);
        let order: VecDeque<String> = ids.into_iter().skip(skip).collect();
        let members = order.iter().cloned().collect();
        RecentIds {
            order,
            members,
            size,
        }
    }

    /// True (and remembered) if `id` is not a repeat; the oldest id leaves a full window.
    fn insert(&mut self, id: &str) -> bool {
        if self.members.contains(id) {
            return false;
        }
        if self.order.len() == self.size {
            if let Some(oldest) = self.order.pop_front() {
                self.members.remove(&oldest);
            }
        }
        self.order.push_back(id.to_owned());
        self.members.insert(id.to_owned());
        true
    }
}

/// The kept samples of a batch, as Python sees them (see `RowDecoder.decode`).
type Columns<'py> = (
    Vec<String>,
    Bound<'py, PyByteArray>,
    Bound<'py, PyByteArray>,
    Bound<'py, PyByteArray>,
    Bound<'py, PyByteArray>,
    Bound<'py, PyByteArray>,
    Bound<'py, PyByteArray>,
    Vec<String>,
    Vec<String>,
);

/// Strict TrainingSample records -> row columns; owns the id -> row maps and recent ids.
#[pyclass(module = "idproxy_native")]
struct RowDecoder {
    history_len: usize,
    tau: u64,
    max_age: f64,
    users: RowIndex,
    items: RowIndex,
    recent: RecentIds,
}

impl RowDecoder {
    /// The batch's columns (see `decode`), or None (and no state changed) if a record is
    /// not strict.
    fn plan<'py>(&mut self, py: Python<'py>, records: &[&[u8]]) -> Option<Columns<'py>> {
        let samples: Vec<Sample> = records
            .iter()
            .map(|raw| parse_strict(raw))
            .collect::<Result<_, _>>()
            .ok()?;
        let kept: Vec<&Sample> = samples
            .iter()
            .filter(|s| self.recent.insert(&s.sample_id))
            .collect();
        let (n, h) = (kept.len(), self.history_len);
        let (mut new_user_ids, mut new_item_ids) = (Vec::new(), Vec::new());
        let mut users = Vec::with_capacity(8 * n);
        let mut items = Vec::with_capacity(8 * n);
        let mut labels = Vec::with_capacity(4 * n);
        let mut is_new = Vec::with_capacity(n);
        let mut ts = Vec::with_capacity(8 * n);
        for s in &kept {
            users.extend_from_slice(&self.users.row(&s.user_id, &mut new_user_ids).to_le_bytes());
            items.extend_from_slice(&self.items.row(&s.item_id, &mut new_item_ids).to_le_bytes());
            labels.extend_from_slice(&f32::from(s.label).to_le_bytes());
            let young = s.item_age_s.is_some_and(|age| age < self.max_age);
            is_new.push(u8::from(s.item_interactions < self.tau || young));
            ts.extend_from_slice(&s.ts.to_le_bytes());
        }
        let mut history = vec![0u8; 8 * n * h];
        for (k, s) in kept.iter().enumerate() {
            let newest = &s.history[s.history.len().saturating_sub(h)..];
            for (j, id) in newest.iter().enumerate() {
                let row = self.items.row(&id.0, &mut new_item_ids);
                let at = 8 * (k * h + j);
                history[at..at + 8].copy_from_slice(&row.to_le_bytes());
            }
        }
        Some((
            kept.iter().map(|s| s.sample_id.to_string()).collect(),
            PyByteArray::new(py, &users),
            PyByteArray::new(py, &items),
            PyByteArray::new(py, &history),
            PyByteArray::new(py, &labels),
            PyByteArray::new(py, &is_new),
            PyByteArray::new(py, &ts),
            new_user_ids,
            new_item_ids,
        ))
    }
}

#[pymethods]
impl RowDecoder {
    /// `user_ids` / `item_ids`: the tables' ids in row order (row r holds ids[r-1]);
    /// `recent_ids`: the sample ids seen last, oldest first.
    #[new]
    #[pyo3(signature = (history_len, dedup_window, new_item_interactions, new_item_age_s,
                        user_ids, item_ids, recent_ids))]
    fn new(
        history_len: usize,
        dedup_window: usize,
        new_item_interactions: u64,
        new_item_age_s: f64,
        user_ids: Vec<String>,
        item_ids: Vec<String>,
        recent_ids: Vec<String>,
    ) -> PyResult<Self> {
        if history_len == 0 || dedup_window == 0 {
            return Err(PyValueError::new_err(
                "history_len and dedup_window must be at least 1",
            ));
        }
        Ok(RowDecoder {
            history_len,
            tau: new_item_interactions,
            max_age: new_item_age_s,
            users: RowIndex::new(user_ids),
            items: RowIndex::new(item_ids),
            recent: RecentIds::new(dedup_window, recent_ids),
        })
    }

    /// Records (bytes) -> the kept samples' columns, or None (and no state changed) if any
    /// record is not a strict-form TrainingSample.
    ///
    /// Columns (n kept samples, h = history_len): sample_ids [n]; then as little-endian
    /// bytearrays users int64 [n], items int64 [n], history int64 [n*h] (the newest h
    /// ids, left-aligned, 0 = pad), labels float32 [n], is_new uint8 [n], ts float64 [n];
    /// then new_user_ids, new_item_ids: the ids that took rows, in row order (users in
    /// sample order; items: the targets in sample order, then the history ids).
    fn decode<'py>(
        &mut self,
        py: Python<'py>,
        values: &Bound<'py, PyList>,
    ) -> PyResult<Option<Columns<'py>>> {
        let mut records = Vec::with_capacity(values.len());
        for value in values.iter() {
            match value.downcast_into::<PyBytes>() {
                Ok(bytes) => records.push(bytes),
                Err(_) => return Ok(None), // a tombstone, say
            }
        }
        let raws: Vec<&[u8]> = records.iter().map(|b| b.as_bytes()).collect();
        Ok(self.plan(py, &raws))
    }
}

/// Why ``value`` is not a strict-form TrainingSample, or None if it is.
#[pyfunction]
fn strict_error(value: &[u8]) -> Option<String> {
    parse_strict(value).err()
}

/// Whether ``value`` takes the hand-parsed path (pydantic's own layout); for the tests.
#[pyfunction]
fn in_dump_layout(value: &[u8]) -> bool {
    parse_layout(value).is_some()
}

#[pymodule]
fn idproxy_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<RowDecoder>()?;
    m.add_function(wrap_pyfunction!(strict_error, m)?)?;
    m.add_function(wrap_pyfunction!(in_dump_layout, m)?)?;
    Ok(())
}
