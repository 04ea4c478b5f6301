//! Column names as rows hold them. Every column of every row names its column, so copying and freeing a name must
//! cost nothing: the names events give are kept for the life of the process (up to a bound), and such a name is a
//! plain pointer, copied and dropped without touching memory other threads use. Past the bound (senders can invent
//! keys without end) a new name is a counted shared allocation, as correct and somewhat slower.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ptr::NonNull;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

/// The bit of [`Name::meta`] that marks a counted name; the other bits are the length.
const COUNTED: usize = 1 << (usize::BITS - 1);

/// A column name: text kept for the life of the process, or a counted `Arc<str>`. Equal names compare, hash and
/// order as their text.
pub struct Name {
    ptr: NonNull<u8>,
    /// The length in bytes, with [`COUNTED`] set for a counted name.
    meta: usize,
}

// SAFETY: a name is a `&'static str` or an `Arc<str>`; both may be sent to and shared with other threads.
unsafe impl Send for Name {}
// SAFETY: as above.
unsafe impl Sync for Name {}

impl Name {
    /// A name of text that lives as long as the process.
    pub fn permanent(text: &'static str) -> Name {
        Name { ptr: NonNull::from(text).cast(), meta: text.len() }
    }

    /// A name that holds a count of a shared allocation.
    pub fn counted(text: Arc<str>) -> Name {
        let len = text.len();
        assert!(len & COUNTED == 0, "a name this long cannot be held");
        let ptr = NonNull::new(Arc::into_raw(text).cast::<u8>().cast_mut()).expect("Arc::into_raw is never null");
        Name { ptr, meta: len | COUNTED }
    }

    /// Whether the name holds a count (it was made past the bound of permanent names).
    pub fn is_counted(&self) -> bool {
        self.meta & COUNTED != 0
    }

    pub fn as_str(&self) -> &str {
        // SAFETY: `ptr` and the length were taken from a `str` that lives at least as long as this name: a
        // permanent one, or the allocation whose count this name holds (released only when it is dropped).
        unsafe { std::str::from_utf8_unchecked(std::slice::from_raw_parts(self.ptr.as_ptr(), self.len())) }
    }

    pub fn len(&self) -> usize {
        self.meta & !COUNTED
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The address of the name's text: one name, one address, for as long as the name (or a clone) lives.
    pub fn addr(&self) -> usize {
        self.ptr.as_ptr() as usize
    }

    /// The `Arc<str>` pointer a counted name was made from.
    fn arc_ptr(&self) -> *const str {
        std::ptr::slice_from_raw_parts(self.ptr.as_ptr().cast_const(), self.len()) as *const str
    }
}

impl Clone for Name {
    fn clone(&self) -> Name {
        if self.is_counted() {
            // SAFETY: a counted name's pointer came from `Arc::into_raw` of an `Arc<str>` of this length, and this
            // name holds one of its counts, so the allocation is live.
            unsafe { Arc::increment_strong_count(self.arc_ptr()) };
        }
        Name { ptr: self.ptr, meta: self.meta }
    }
}

impl Drop for Name {
    fn drop(&mut self) {
        if self.is_counted() {
            // SAFETY: as in `clone`; the count this name holds is given back once, here.
            unsafe { Arc::decrement_strong_count(self.arc_ptr()) };
        }
    }
}

impl std::ops::Deref for Name {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for Name {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Name) -> bool {
        (self.addr() == other.addr() && self.len() == other.len()) || self.as_str() == other.as_str()
    }
}

impl Eq for Name {}

impl Hash for Name {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A counted name of its own (for names made outside the interning of events: tests, the `discards` table).
impl From<&str> for Name {
    fn from(text: &str) -> Name {
        Name::counted(text.into())
    }
}

/// How many bytes of names (their text, and what keeping each costs besides) are kept for the life of the process.
const PERMANENT_BYTES: usize = 16 << 20;

/// What keeping one permanent name costs besides its text: its place in the set.
const PER_NAME: usize = 32;

/// The names kept for the life of the process.
struct Permanent {
    names: HashSet<&'static str, foldhash::fast::RandomState>,
    bytes: usize,
}

impl Permanent {
    /// The name for `text`: the permanent one, made now if `limit` bytes allow, or else a counted one.
    fn name(&mut self, text: &str, limit: usize) -> Name {
        if let Some(&kept) = self.names.get(text) {
            return Name::permanent(kept);
        }
        let cost = text.len() + PER_NAME;
        if self.bytes + cost > limit {
            return Name::from(text);
        }
        let kept: &'static str = Box::leak(text.into());
        self.bytes += cost;
        self.names.insert(kept);
        Name::permanent(kept)
    }
}

static PERMANENT: LazyLock<Mutex<Permanent>> =
    LazyLock::new(|| Mutex::new(Permanent { names: HashSet::default(), bytes: 0 }));

/// The one name of `text` for the life of the process, while the bound on such names allows; a counted name
/// after. Called once per distinct name and thread (see `schema::intern`), not per row.
pub fn intern(text: &str) -> Name {
    PERMANENT.lock().unwrap_or_else(PoisonError::into_inner).name(text, PERMANENT_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permanent_and_counted_names_read_compare_and_hash_as_their_text() {
        let p = Name::permanent("context_ip");
        let c = Name::from("context_ip");
        assert!(!p.is_counted() && c.is_counted());
        assert_eq!((p.as_str(), c.as_str(), p.len(), &*c), ("context_ip", "context_ip", 10, "context_ip"));
        assert_eq!(p, c);
        assert_ne!(p, Name::from("context_id"));
        assert_ne!(p.addr(), c.addr());
        let set: HashSet<Name> = [p.clone(), Name::from("user_id")].into_iter().collect();
        assert!(set.contains("context_ip") && set.contains("user_id") && !set.contains("id"));
        assert_eq!(format!("{c} {c:?}"), "context_ip \"context_ip\"");
        assert!(Name::from("").is_empty());
    }

    #[test]
    fn a_counted_name_frees_its_text_with_its_last_clone() {
        let text: Arc<str> = "properties_plan".into();
        let name = Name::counted(text.clone());
        let clones: Vec<Name> = (0..10).map(|_| name.clone()).collect();
        assert_eq!(Arc::strong_count(&text), 12);
        assert!(clones.iter().all(|c| c.addr() == name.addr() && c.as_str() == "properties_plan"));
        drop(clones);
        drop(name);
        assert_eq!(Arc::strong_count(&text), 1, "no name holds the text");
    }

    #[test]
    fn names_are_kept_for_good_until_the_bound_then_counted() {
        let mut kept = Permanent { names: HashSet::default(), bytes: 0 };
        let limit = 2 * (PER_NAME + 8);
        let a = kept.name("aaaaaaaa", limit);
        let again = kept.name("aaaaaaaa", limit);
        assert!(!a.is_counted() && a.addr() == again.addr(), "one text, one permanent name");
        let b = kept.name("bbbbbbbb", limit);
        assert!(!b.is_counted());
        // The bound is reached: a new text is counted, an old one still permanent.
        let c = kept.name("cccccccc", limit);
        assert!(c.is_counted() && c.as_str() == "cccccccc");
        assert!(!kept.name("bbbbbbbb", limit).is_counted());
        assert_eq!(kept.names.len(), 2);
        assert_eq!(kept.bytes, limit);
    }

    #[test]
    fn interned_names_are_one_allocation_across_threads() {
        let here = intern("context_library_name");
        let there = std::thread::spawn(|| intern("context_library_name").addr()).join().unwrap();
        assert_eq!(here.addr(), there);
        assert!(!here.is_counted());
    }
}
