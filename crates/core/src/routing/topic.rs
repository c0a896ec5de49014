//! Topic-exchange matching (AMQP `topic`, and MQTT subscriptions bound on `amq.topic`).
//!
//! # Semantics (as RabbitMQ's `rabbit_db_topic_exchange`)
//!
//! Routing keys and binding patterns are split into *words* on `.`. In a pattern,
//! the word `*` matches exactly one word and the word `#` matches zero or more
//! words; every other word (including `a*`, `##` or the empty word) matches only
//! itself. Routing-key words are always literal: a key word `*` is just the text
//! `*`.
//!
//! Splitting follows RabbitMQ exactly:
//! - The empty string has **zero** words (RabbitMQ's `split_topic_key_binary(<<>>)
//!   -> []`). So the key `""` is matched by the patterns `""`, `#`, `#.#`, ... but
//!   **not** by `*` (which needs one word). This deliberately differs from reading
//!   `""` as "one empty word"; it is what RabbitMQ does.
//! - Any other string splits on every `.`: empty words are words. `a..b` has three
//!   words (`a`, the empty word, `b`), `a.` has two (`a` and the empty word), `.`
//!   has two empty words. So `*`
//!   does not match `a.`, but `a.*` and `a.#` do, and `*.*` matches `.`.
//! - `#` may match zero words anywhere: `#` matches everything including `""`;
//!   `a.#` matches `a`; `#.a` matches `a`; `a.#.b` matches `a.b`; `#.#` behaves
//!   like `#`.
//!
//! # Limits
//!
//! AMQP routing keys and binding keys are short strings: at most
//! [`TOPIC_LEN_MAX`] (255) bytes, so at most 256 words. Adapters enforce that at
//! their boundary (MQTT topics can be longer on the wire; the MQTT adapter must
//! check). This module does not reject longer input: it never panics and its
//! cost stays polynomial for any length, it is only slower.
//!
//! # Cost
//!
//! [`TopicIndex`] is a trie over words with separate `*` and `#` children. Matching
//! walks only the branches that can match the key: the cost depends on the key's
//! length and on the number of matching branches, not on the number of bindings.
//! A `#` node may consume any number of words, so a key can reach the same trie
//! node at the same key position along several paths (`#.#.#.x`); a visited set
//! on (node, position) makes each such state be expanded once, so the walk is at
//! most `O(nodes * words)` states instead of exponential. The visited set is only
//! allocated once the walk goes below a second `#` on one path: with at most one
//! `#` on every path no state can be reached twice (see `Walk`).

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

/// The longest routing key or binding key AMQP can carry (a short string), in bytes.
pub const TOPIC_LEN_MAX: usize = 255;

/// "No words left" as a key position (see [`next_word`]).
const DONE: usize = usize::MAX;

/// The start position of a key's words: `DONE` for the empty key (zero words).
fn first_pos(key: &str) -> usize {
    if key.is_empty() {
        DONE
    } else {
        0
    }
}

/// The word starting at byte `pos` of `key` and the position after it.
///
/// `pos` must not be `DONE`. A position equal to `key.len()` denotes the trailing
/// empty word of a key ending in `.`.
fn next_word(key: &str, pos: usize) -> (&str, usize) {
    let rest = key.get(pos..).unwrap_or("");
    match rest.as_bytes().iter().position(|&b| b == b'.') {
        Some(i) => (&rest[..i], pos + i + 1),
        None => (rest, DONE),
    }
}

/// The words of a key or pattern, as RabbitMQ splits them (see the module docs).
pub fn split_words(s: &str) -> impl Iterator<Item = &str> {
    let mut pos = first_pos(s);
    std::iter::from_fn(move || {
        if pos == DONE {
            return None;
        }
        let (w, next) = next_word(s, pos);
        pos = next;
        Some(w)
    })
}

/// Whether the binding `pattern` matches the routing `key` (single check).
///
/// A dynamic program over (pattern word, key word) positions: `O(p * k)` time and
/// `O(k)` space, no recursion, for any input. For many bindings use [`TopicIndex`].
pub fn topic_matches(pattern: &str, key: &str) -> bool {
    let pat: Vec<&str> = split_words(pattern).collect();
    let words: Vec<&str> = split_words(key).collect();
    let k = words.len();
    // next[j]: pattern[i+1..] matches words[j..]; cur[j]: pattern[i..] matches words[j..].
    let mut next = vec![false; k + 1];
    next[k] = true; // the empty pattern matches only the empty remainder
    let mut cur = vec![false; k + 1];
    for p in pat.iter().rev() {
        match *p {
            "#" => {
                // # matches zero words (next[j]) or one more word (cur[j + 1]).
                cur[k] = next[k];
                for j in (0..k).rev() {
                    cur[j] = next[j] || cur[j + 1];
                }
            }
            "*" => {
                cur[k] = false;
                cur[..k].copy_from_slice(&next[1..]);
            }
            lit => {
                cur[k] = false;
                for j in 0..k {
                    cur[j] = words[j] == lit && next[j + 1];
                }
            }
        }
        std::mem::swap(&mut cur, &mut next);
    }
    next[0]
}

type NodeId = u32;
const ROOT: NodeId = 0;

/// One trie node: the bindings whose pattern ends here, and the outgoing edges.
#[derive(Debug)]
struct Node<D> {
    /// Literal-word children.
    words: HashMap<Box<str>, NodeId>,
    /// The `*` child.
    star: Option<NodeId>,
    /// The `#` child.
    hash: Option<NodeId>,
    /// Whether this node is reached by a `#` edge (it may consume further words).
    is_hash: bool,
    /// Destinations bound with the pattern that ends at this node.
    dests: HashSet<D>,
}

impl<D> Node<D> {
    fn new(is_hash: bool) -> Self {
        Node {
            words: HashMap::new(),
            star: None,
            hash: None,
            is_hash,
            dests: HashSet::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.dests.is_empty() && self.words.is_empty() && self.star.is_none() && self.hash.is_none()
    }

    fn child(&self, word: &str) -> Option<NodeId> {
        match word {
            "*" => self.star,
            "#" => self.hash,
            w => self.words.get(w).copied(),
        }
    }
}

/// A set of topic bindings `(pattern, destination)` indexed for matching.
///
/// Each `(pattern, destination)` pair is stored once; binding it again is a no-op.
/// Patterns are stored as given (`a.#.#` and `a.#` are distinct bindings even though
/// they match the same keys), as RabbitMQ does.
#[derive(Debug)]
pub struct TopicIndex<D> {
    /// Arena of nodes; `ROOT` is always present. Freed slots are listed in `free`.
    nodes: Vec<Node<D>>,
    free: Vec<NodeId>,
    /// Number of `(pattern, destination)` bindings.
    len: usize,
}

impl<D> Default for TopicIndex<D> {
    fn default() -> Self {
        TopicIndex {
            nodes: vec![Node::new(false)],
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<D: Clone + Eq + Hash> TopicIndex<D> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of `(pattern, destination)` bindings.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn node(&self, id: NodeId) -> &Node<D> {
        &self.nodes[id as usize]
    }

    fn node_mut(&mut self, id: NodeId) -> &mut Node<D> {
        &mut self.nodes[id as usize]
    }

    fn alloc(&mut self, is_hash: bool) -> NodeId {
        match self.free.pop() {
            Some(id) => {
                self.nodes[id as usize] = Node::new(is_hash);
                id
            }
            None => {
                let id = NodeId::try_from(self.nodes.len())
                    .expect("topic trie exceeds u32::MAX nodes (bindings are limited far below)");
                self.nodes.push(Node::new(is_hash));
                id
            }
        }
    }

    /// Binds `dest` with `pattern`. Binding an existing pair again changes nothing.
    pub fn bind(&mut self, pattern: &str, dest: D) {
        let mut at = ROOT;
        for word in split_words(pattern) {
            at = match self.node(at).child(word) {
                Some(next) => next,
                None => {
                    let next = self.alloc(word == "#");
                    let node = self.node_mut(at);
                    match word {
                        "*" => node.star = Some(next),
                        "#" => node.hash = Some(next),
                        w => {
                            node.words.insert(w.into(), next);
                        }
                    }
                    next
                }
            };
        }
        if self.node_mut(at).dests.insert(dest) {
            self.len += 1;
        }
    }

    /// The trie node where `pattern` ends, if any binding's pattern passes through it.
    fn find(&self, pattern: &str) -> Option<NodeId> {
        let mut at = ROOT;
        for word in split_words(pattern) {
            at = self.node(at).child(word)?;
        }
        Some(at)
    }

    /// Whether `dest` is bound with exactly `pattern`.
    pub fn contains(&self, pattern: &str, dest: &D) -> bool {
        self.find(pattern)
            .is_some_and(|n| self.node(n).dests.contains(dest))
    }

    /// Removes the binding of `dest` with `pattern`; false if there was none.
    /// Trie nodes left without bindings or children are freed.
    pub fn unbind(&mut self, pattern: &str, dest: &D) -> bool {
        // (parent, word, child) for each edge on the pattern's path.
        let mut path: Vec<(NodeId, &str, NodeId)> = Vec::new();
        let mut at = ROOT;
        for word in split_words(pattern) {
            let Some(next) = self.node(at).child(word) else {
                return false;
            };
            path.push((at, word, next));
            at = next;
        }
        if !self.node_mut(at).dests.remove(dest) {
            return false;
        }
        self.len -= 1;
        for &(parent, word, child) in path.iter().rev() {
            if !self.node(child).is_empty() {
                break;
            }
            let p = self.node_mut(parent);
            match word {
                "*" => p.star = None,
                "#" => p.hash = None,
                w => {
                    p.words.remove(w);
                }
            }
            // Drop the freed node's allocations now rather than on reuse.
            self.nodes[child as usize] = Node::new(false);
            self.free.push(child);
        }
        true
    }

    /// Every `(pattern, destination)` binding, in no particular order.
    pub fn bindings(&self) -> Vec<(String, D)> {
        let mut out = Vec::with_capacity(self.len);
        // (node, pattern so far, whether the pattern has at least one word).
        let mut stack: Vec<(NodeId, String, bool)> = vec![(ROOT, String::new(), false)];
        while let Some((id, pattern, has_words)) = stack.pop() {
            let node = self.node(id);
            out.extend(node.dests.iter().map(|d| (pattern.clone(), d.clone())));
            let edges = node
                .words
                .iter()
                .map(|(w, &c)| (&**w, c))
                .chain(node.star.map(|c| ("*", c)))
                .chain(node.hash.map(|c| ("#", c)));
            for (word, child) in edges {
                let mut p = String::with_capacity(pattern.len() + 1 + word.len());
                p.push_str(&pattern);
                if has_words {
                    p.push('.');
                }
                p.push_str(word);
                stack.push((child, p, true));
            }
        }
        out
    }

    /// The distinct destinations whose pattern matches `key`, in no particular order.
    pub fn matches(&self, key: &str) -> Vec<D> {
        let mut out = Vec::new();
        self.matches_into(key, &mut out);
        out
    }

    /// Appends the distinct destinations whose pattern matches `key` to `out`
    /// (distinct among themselves; entries already in `out` are not consulted).
    pub fn matches_into(&self, key: &str, out: &mut Vec<D>) {
        let mut found: Vec<&D> = Vec::new();
        self.walk(key, |dests| found.extend(dests.iter()));
        dedup_refs(&mut found);
        out.extend(found.into_iter().cloned());
    }

    /// Calls `visit` with the destination set of every trie node whose pattern
    /// matches `key` (each node at most once).
    fn walk<'a>(&'a self, key: &str, mut visit: impl FnMut(&'a HashSet<D>)) {
        // DFS over (node, key position) states with an explicit stack: no recursion,
        // whatever the key's length.
        let mut walk = Walk {
            stack: vec![State {
                node: ROOT,
                pos: first_pos(key),
                hashes: 0,
            }],
            seen: None,
        };
        while let Some(State {
            node: id,
            pos,
            hashes,
        }) = walk.stack.pop()
        {
            let node = self.node(id);
            if pos == DONE {
                if !node.dests.is_empty() {
                    visit(&node.dests);
                }
            } else {
                let (word, next) = next_word(key, pos);
                if let Some(&c) = node.words.get(word) {
                    walk.push(c, next, hashes);
                }
                if let Some(c) = node.star {
                    walk.push(c, next, hashes);
                }
                if node.is_hash {
                    // This `#` consumes one more word.
                    walk.push(id, next, hashes);
                }
            }
            if let Some(h) = node.hash {
                // A `#` child starts by consuming zero words.
                if hashes >= 1 && walk.seen.is_none() {
                    walk.seen = Some(HashSet::default());
                }
                walk.push(h, pos, hashes.saturating_add(1));
            }
        }
    }
}

/// A state of [`TopicIndex::walk`]: at trie node `node`, with the key's words from
/// `pos` on still to match.
struct State {
    node: NodeId,
    pos: usize,
    /// How many `#` edges lead from the root to `node` (saturating).
    hashes: u8,
}

/// The work list of one [`TopicIndex::walk`].
///
/// A state can be reached twice only if its node lies below two `#` edges: a trie
/// node *is* its path, so a node below no `#` is reached at one position at most,
/// and below a single `#` (entered from a node visited at one position) each
/// position is reached once, from the `#` node at the position before. So the
/// visited set is only allocated when the walk takes a second `#` edge on a path,
/// before any such state exists; from then on every push is filtered.
struct Walk {
    stack: Vec<State>,
    seen: Option<HashSet<(NodeId, usize), BuildFxHasher>>,
}

impl Walk {
    fn push(&mut self, node: NodeId, pos: usize, hashes: u8) {
        if let Some(seen) = &mut self.seen {
            if !seen.insert((node, pos)) {
                return;
            }
        }
        self.stack.push(State { node, pos, hashes });
    }
}

/// A fast multiplicative hasher (FxHash) for the walk's visited set, whose keys are
/// the index's own node ids and key positions, not client-chosen strings.
#[derive(Default, Clone, Copy)]
struct BuildFxHasher;

impl std::hash::BuildHasher for BuildFxHasher {
    type Hasher = FxHasher;
    fn build_hasher(&self) -> FxHasher {
        FxHasher(0)
    }
}

struct FxHasher(u64);

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl std::hash::Hasher for FxHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.add(u64::from(b));
        }
    }
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
}

/// Removes duplicate references (by value), keeping the first of each.
fn dedup_refs<D: Eq + Hash>(found: &mut Vec<&D>) {
    if found.len() < 2 {
        return;
    }
    if found.len() <= 16 {
        let mut i = 1;
        while i < found.len() {
            if found[..i].contains(&found[i]) {
                found.swap_remove(i);
            } else {
                i += 1;
            }
        }
    } else {
        let mut set = HashSet::with_capacity(found.len());
        found.retain(|d| set.insert(*d));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Independent reference: plain backtracking over word slices (exponential in
    /// the worst case, fine for the small inputs the tests use).
    fn naive(pattern: &str, key: &str) -> bool {
        fn words(s: &str) -> Vec<&str> {
            if s.is_empty() {
                Vec::new()
            } else {
                s.split('.').collect()
            }
        }
        fn go(p: &[&str], k: &[&str]) -> bool {
            match p.first() {
                None => k.is_empty(),
                Some(&"#") => (0..=k.len()).any(|skip| go(&p[1..], &k[skip..])),
                Some(&"*") => !k.is_empty() && go(&p[1..], &k[1..]),
                Some(w) => k.first() == Some(w) && go(&p[1..], &k[1..]),
            }
        }
        go(&words(pattern), &words(key))
    }

    fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
        v.sort();
        v
    }

    const CASES: &[(&str, &str, bool)] = &[
        // RabbitMQ tutorial 5.
        ("*.orange.*", "quick.orange.rabbit", true),
        ("*.*.rabbit", "quick.orange.rabbit", true),
        ("*.orange.*", "lazy.orange.elephant", true),
        ("lazy.#", "lazy.orange.elephant", true),
        ("*.orange.*", "quick.orange.fox", true),
        ("lazy.#", "quick.orange.fox", false),
        ("*.*.rabbit", "lazy.brown.fox", false),
        ("lazy.#", "lazy.brown.fox", true),
        ("*.*.rabbit", "lazy.pink.rabbit", true),
        ("lazy.#", "lazy.pink.rabbit", true),
        ("*.orange.*", "quick.brown.fox", false),
        ("*.orange.*", "orange", false),
        ("*.orange.*", "quick.orange.male.rabbit", false),
        ("*.*.rabbit", "quick.orange.male.rabbit", false),
        ("lazy.#", "lazy.orange.male.rabbit", true),
        ("lazy.#", "lazy", true),
        // `#` alone and repeated.
        ("#", "", true),
        ("#", "a", true),
        ("#", "a.b.c", true),
        ("#", ".", true),
        ("#.#", "", true),
        ("#.#", "a.b", true),
        ("#.#.#", "a", true),
        ("a.#", "a", true),
        ("a.#", "a.b.c", true),
        ("a.#", "b", false),
        ("a.#", "ab", false),
        ("#.a", "a", true),
        ("#.a", "x.y.a", true),
        ("#.a", "a.x", false),
        ("a.#.b", "a.b", true),
        ("a.#.b", "a.x.b", true),
        ("a.#.b", "a.x.y.b", true),
        ("a.#.b", "a.b.c", false),
        ("a.#.b", "a.b.b", true),
        ("#.a.#", "a", true),
        ("#.a.#", "x.a.y", true),
        ("#.a.#", "x.y", false),
        ("#.*", "", false),
        ("#.*", "a", true),
        ("*.#", "a.b", true),
        ("#.*.#", "a.b", true),
        // Empty key and empty pattern: zero words.
        ("", "", true),
        ("*", "", false),
        ("", "a", false),
        ("a", "", false),
        ("", ".", false),
        // Empty words are words.
        ("*", "a", true),
        ("*", "a.", false),
        ("*", ".", false),
        ("*.*", ".", true),
        ("a.*", "a.", true),
        ("a..b", "a..b", true),
        ("a.*.b", "a..b", true),
        ("a.b", "a..b", false),
        ("a.#.b", "a..b", true),
        (".", ".", true),
        ("", ".", false),
        // Only whole words are wildcards.
        ("a*", "ab", false),
        ("a*", "a*", true),
        ("##", "a", false),
        ("##", "##", true),
        ("a.*", "a.*", true),
        ("a.b", "a.*", false),
        ("a.#", "a.#", true),
    ];

    #[test]
    fn classic_cases() {
        for &(pattern, key, expected) in CASES {
            assert_eq!(naive(pattern, key), expected, "naive {pattern:?} {key:?}");
            assert_eq!(
                topic_matches(pattern, key),
                expected,
                "topic_matches {pattern:?} {key:?}"
            );
            let mut idx = TopicIndex::new();
            idx.bind(pattern, 1u32);
            assert_eq!(
                idx.matches(key),
                if expected { vec![1] } else { vec![] },
                "index {pattern:?} {key:?}"
            );
        }
    }

    #[test]
    fn tutorial_five_index() {
        let mut idx = TopicIndex::new();
        idx.bind("*.orange.*", "Q1");
        idx.bind("*.*.rabbit", "Q2");
        idx.bind("lazy.#", "Q2");
        assert_eq!(idx.len(), 3);
        assert_eq!(sorted(idx.matches("quick.orange.rabbit")), vec!["Q1", "Q2"]);
        assert_eq!(
            sorted(idx.matches("lazy.orange.elephant")),
            vec!["Q1", "Q2"]
        );
        assert_eq!(idx.matches("quick.orange.fox"), vec!["Q1"]);
        assert_eq!(idx.matches("lazy.brown.fox"), vec!["Q2"]);
        // Matches two of Q2's patterns, delivered once.
        assert_eq!(idx.matches("lazy.pink.rabbit"), vec!["Q2"]);
        assert!(idx.matches("quick.brown.fox").is_empty());
        assert!(idx.matches("orange").is_empty());
        assert!(idx.matches("quick.orange.male.rabbit").is_empty());
        assert_eq!(idx.matches("lazy.orange.male.rabbit"), vec!["Q2"]);
    }

    #[test]
    fn bind_unbind_and_listing() {
        let mut idx = TopicIndex::new();
        assert!(idx.is_empty());
        idx.bind("a.b", 1);
        idx.bind("a.b", 1); // duplicate: no-op
        idx.bind("a.b", 2);
        idx.bind("a.#", 1);
        idx.bind("", 3);
        idx.bind("#", 4);
        idx.bind("*.b", 5);
        assert_eq!(idx.len(), 6);
        assert!(idx.contains("a.b", &2));
        assert!(!idx.contains("a.c", &2));
        assert!(!idx.contains("a", &1));
        assert_eq!(
            sorted(idx.bindings()),
            vec![
                ("".to_owned(), 3),
                ("#".to_owned(), 4),
                ("*.b".to_owned(), 5),
                ("a.#".to_owned(), 1),
                ("a.b".to_owned(), 1),
                ("a.b".to_owned(), 2),
            ]
        );
        assert_eq!(sorted(idx.matches("a.b")), vec![1, 2, 4, 5]);
        assert_eq!(sorted(idx.matches("")), vec![3, 4]);

        assert!(!idx.unbind("a.b", &9));
        assert!(!idx.unbind("a.c", &1));
        assert!(!idx.unbind("a", &1));
        assert!(idx.unbind("a.b", &1));
        assert!(!idx.unbind("a.b", &1));
        assert_eq!(sorted(idx.matches("a.b")), vec![1, 2, 4, 5]); // 1 still via a.#
        assert!(idx.unbind("a.#", &1));
        assert_eq!(sorted(idx.matches("a.b")), vec![2, 4, 5]);
        for (p, d) in [("a.b", 2), ("", 3), ("#", 4), ("*.b", 5)] {
            assert!(idx.unbind(p, &d));
        }
        assert!(idx.is_empty());
        assert!(idx.bindings().is_empty());
        // Every node but the root was freed and is reused.
        assert_eq!(idx.free.len() + 1, idx.nodes.len());
        assert!(idx.node(ROOT).is_empty());
        idx.bind("x.y.z", 7);
        assert_eq!(idx.matches("x.y.z"), vec![7]);
        assert_eq!(idx.nodes.len(), 1 + 3 + idx.free.len());
    }

    #[test]
    fn unbind_prunes_only_empty_branches() {
        let mut idx = TopicIndex::new();
        idx.bind("a.b.c", 1);
        idx.bind("a", 2);
        assert!(idx.unbind("a.b.c", &1));
        // "a" keeps its node; "b" and "c" are freed.
        assert_eq!(idx.free.len(), 2);
        assert_eq!(idx.matches("a"), vec![2]);
        assert!(idx.matches("a.b.c").is_empty());
    }

    #[test]
    fn many_hashes_do_not_blow_up() {
        // Without memoisation this is exponential in the number of `#`.
        let mut idx = TopicIndex::new();
        let pattern = vec!["#"; 40].join(".") + ".z";
        idx.bind(&pattern, 1);
        idx.bind(&vec!["#"; 100].join("."), 2);
        let key = vec!["a"; 120].join(".");
        assert_eq!(idx.matches(&key), vec![2]);
        assert_eq!(sorted(idx.matches(&(key.clone() + ".z"))), vec![1, 2]);
        assert!(!topic_matches(&pattern, &key));
        assert!(topic_matches(&pattern, &(key + ".z")));
    }

    #[test]
    fn long_inputs_do_not_panic() {
        let mut idx = TopicIndex::new();
        let long = ".".repeat(10_000);
        idx.bind(&long, 1);
        idx.bind("#", 2);
        assert_eq!(sorted(idx.matches(&long)), vec![1, 2]);
        assert!(topic_matches(&long, &long));
        assert!(idx.unbind(&long, &1));
        assert_eq!(idx.len(), 1);
    }

    #[test]
    fn multibyte_words() {
        assert!(topic_matches("é.*.ü", "é.ß.ü"));
        let mut idx = TopicIndex::new();
        idx.bind("日本.#", 1);
        assert_eq!(idx.matches("日本.東京"), vec![1]);
        assert!(idx.matches("日本語").is_empty());
    }

    #[test]
    fn split_words_as_rabbitmq() {
        fn w(s: &str) -> Vec<&str> {
            split_words(s).collect()
        }
        assert_eq!(w(""), Vec::<&str>::new());
        assert_eq!(w("a"), vec!["a"]);
        assert_eq!(w("."), vec!["", ""]);
        assert_eq!(w("a."), vec!["a", ""]);
        assert_eq!(w("a..b"), vec!["a", "", "b"]);
    }

    fn word() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["a", "b", "", "*", "#"])
    }

    fn pattern() -> impl Strategy<Value = String> {
        prop::collection::vec(word(), 0..7).prop_map(|w| w.join("."))
    }

    fn key() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(vec!["a", "b", "", "c"]), 0..8)
            .prop_map(|w| w.join("."))
    }

    proptest! {
        #[test]
        fn topic_matches_agrees_with_naive(p in pattern(), k in key()) {
            prop_assert_eq!(topic_matches(&p, &k), naive(&p, &k));
        }

        #[test]
        fn index_agrees_with_naive(
            binds in prop::collection::vec((pattern(), 0u8..6), 0..24),
            unbinds in prop::collection::vec(0usize..24, 0..8),
            keys in prop::collection::vec(key(), 1..8),
        ) {
            let mut idx = TopicIndex::new();
            let mut model: HashSet<(String, u8)> = HashSet::new();
            for (p, d) in &binds {
                idx.bind(p, *d);
                model.insert((p.clone(), *d));
            }
            for i in unbinds {
                if let Some((p, d)) = binds.get(i) {
                    prop_assert_eq!(idx.unbind(p, d), model.remove(&(p.clone(), *d)));
                }
            }
            prop_assert_eq!(idx.len(), model.len());
            let listed: HashSet<(String, u8)> = idx.bindings().into_iter().collect();
            prop_assert_eq!(&listed, &model);
            for k in keys {
                let got = sorted(idx.matches(&k));
                let mut want: Vec<u8> = model
                    .iter()
                    .filter(|(p, _)| naive(p, &k))
                    .map(|(_, d)| *d)
                    .collect();
                want.sort();
                want.dedup();
                prop_assert_eq!(got, want, "key {:?}", k);
            }
        }
    }
}
