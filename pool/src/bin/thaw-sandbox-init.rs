//! The sandbox init as a stand-alone binary, for the pool's own tests. The
//! `thaw` binary runs the same code as `thaw sandbox-init`.

fn main() {
    pool::sandbox::init::init_main()
}
