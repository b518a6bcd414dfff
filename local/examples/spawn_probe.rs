use std::time::Instant;
#[tokio::main]
async fn main() {
    let binary = std::env::args().nth(1).unwrap();
    for burst in [true, false, true, false] {
        let limits = local::runtime::limits::Limits::new(burst).unwrap();
        let cg = limits.instance("Probe", 128).unwrap();
        let mut cmd = tokio::process::Command::new(&binary);
        cmd.env_clear()
            .env("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:1")
            .kill_on_drop(true);
        cg.attach(&mut cmd);
        let t = Instant::now();
        let mut child = cmd.spawn().unwrap();
        let spawn = t.elapsed();
        let status = child.wait().await;
        println!(
            "burst {burst}: spawn returned after {spawn:?}, exit after {:?} ({status:?})",
            t.elapsed()
        );
    }
}
