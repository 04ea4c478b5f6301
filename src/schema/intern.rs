//! Column names computed once per key path and shared by every row that uses them.
//!
//! The same keys recur in nearly every event (`context.library.name`, `properties.revenue`, ...). Each thread
//! remembers the column name of every path it has flattened, and each distinct column name is one allocation
//! ([`intern`]), so building a row allocates no name and two names are the same column exactly when they are the
//! same allocation (which makes a pointer a cheap, collision-free map key within one event). Each column also has a
//! number, dense from zero among the thread's names, so that a row's columns can be tracked in an array.

use std::cell::RefCell;
use std::collections::HashMap;

use foldhash::fast::RandomState;
use std::rc::Rc;

use crate::layout::TableKind;
use crate::layout::name::{Name, intern};
use crate::schema::names::snake_case;

/// Past this many remembered paths, or this many bytes of them (hostile senders can invent keys without end), a
/// thread starts afresh.
const MAX_PATHS: usize = 50_000;
const MAX_BYTES: usize = 8 << 20;

/// A key path, its column name and the column's number: the path shared only within the thread that flattens
/// events, the name by every row.
pub type Named = (Rc<str>, Name, u32);

/// Key paths and the column names they give.
#[derive(Default)]
pub struct Names {
    /// Path → (the path, shared; its column name and number).
    paths: HashMap<Rc<str>, (Name, u32), RandomState>,
    /// Column name → its number, the count of names before it.
    columns: HashMap<Name, u32, RandomState>,
    /// Bytes of the paths and names held.
    bytes: usize,
    /// The shared path and column name of each fixed column of a kind of table, looked up once.
    fixed: HashMap<TableKind, Vec<Named>, RandomState>,
}

impl Names {
    /// The shared path, the column name and its number of a flattened key path (`context.library.name` →
    /// `context_library_name`).
    pub fn get(&mut self, path: &str) -> Named {
        if let Some((p, (c, number))) = self.paths.get_key_value(path) {
            return (p.clone(), c.clone(), *number);
        }
        let (column, number) = self.column(&snake_case(path));
        let path: Rc<str> = path.into();
        self.bytes += path.len();
        self.paths.insert(path.clone(), (column.clone(), number));
        (path, column, number)
    }

    /// The one allocation of a column name, and its number.
    pub fn column(&mut self, name: &str) -> (Name, u32) {
        if let Some((c, number)) = self.columns.get_key_value(name) {
            return (c.clone(), *number);
        }
        let c = intern(name);
        // The names made between two bounds are far fewer than 2^32: an event's keys are bounded by its size.
        let number = self.columns.len() as u32;
        self.bytes += c.len();
        self.columns.insert(c.clone(), number);
        (c, number)
    }

    /// The shared path and column name of each fixed column of a `kind` table, as [`Names::get`] gives them.
    pub fn fixed(&mut self, kind: TableKind) -> &[Named] {
        if !self.fixed.contains_key(&kind) {
            let names = kind.fixed_names().map(|n| self.get(n)).collect();
            self.fixed.insert(kind, names);
        }
        &self.fixed[&kind]
    }

    /// Forgets everything once it has grown past its bound. Called between events only, so that the names of one
    /// event are always shared.
    fn bound(&mut self) {
        if self.paths.len() > MAX_PATHS || self.columns.len() > MAX_PATHS || self.bytes > MAX_BYTES {
            *self = Names::default();
        }
    }
}

thread_local! {
    static NAMES: RefCell<Names> = RefCell::new(Names::default());
}

/// Runs `f` with this thread's names (bounded first). Not re-entrant.
pub fn with_names<R>(f: impl FnOnce(&mut Names) -> R) -> R {
    NAMES.with(|n| {
        let mut n = n.borrow_mut();
        n.bound();
        f(&mut n)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::rows::addr;

    #[test]
    fn one_allocation_per_column() {
        let mut n = Names::default();
        let (p1, c1, k1) = n.get("context.library.name");
        let (p2, c2, k2) = n.get("context.library.name");
        assert_eq!((&*p1, &*c1), ("context.library.name", "context_library_name"));
        assert!(Rc::ptr_eq(&p1, &p2) && c1.addr() == c2.addr() && k1 == k2);
        // Two paths, one column: one allocation, one number.
        let (_, a, ka) = n.get("Plan Name");
        let (_, b, kb) = n.get("plan_name");
        assert_eq!((addr(&a), ka), (addr(&b), kb));
        assert_ne!(addr(&a), addr(&c1));
        // Numbers are dense from zero, one a column.
        assert_eq!((k1, ka), (0, 1));
        // A fixed column is the same allocation as the column a key path of the same name gives.
        let (path, column, number) =
            n.fixed(TableKind::Tracks).iter().find(|(p, _, _)| &**p == "user_id").cloned().unwrap();
        let (p, c, k) = n.get("user_id");
        assert!(Rc::ptr_eq(&path, &p) && column.addr() == c.addr() && number == k);
    }
}
