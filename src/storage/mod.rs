//! Storage back ends that touch the filesystem. Outside the sans-IO core: only the node uses them.

pub mod disk;
