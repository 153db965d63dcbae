//! `impl Lab`, by what it handles: the namespaces and links (`topology`), what runs
//! besides multiroute (`services`), and multiroute in the router (`router`).
mod router;
mod services;
mod topology;

use super::*;
