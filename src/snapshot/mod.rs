//! The overlay snapshot store: each image layer unpacked once into
//! `<root>/snapshots/<n>/fs`, keyed by its chain ID and shared between
//! images; container root filesystems are overlays of these.
