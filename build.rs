// `sqlx::migrate!` embeds the migrations at compile time; without this, cargo would
// not rebuild the server when a migration is added or changed (sqlx's advice).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
