//! What `PGWS_ROOT_PATH` serves (PROTOCOL.md §13): files under the root, but no
//! dotfile and nothing a symbolic link leads to outside the root.

use pgws::server;

use std::{net::SocketAddr, os::unix::fs::symlink, path::PathBuf};

use crate::{
    common::{running::Running, *},
    server::start_upstream,
};

/// A root of static files and, beside it, a directory it must not reach; both
/// removed on drop.
struct Tree {
    base: PathBuf,
}

impl Tree {
    fn new() -> Tree {
        let base = std::env::temp_dir().join(unique("pgws_root"));
        let write = |path: &str, text: &str| {
            let path = base.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        write("outside/secret.txt", "SECRET");
        write("outside/index.html", "SECRET INDEX");
        write("root/index.html", "home");
        write("root/app.js", "let x = 1;");
        write("root/.env", "PGWS_JWT_SECRET=SECRET");
        write("root/.git/config", "SECRET CONFIG");
        write(
            "root/.well-known/security.txt",
            "Contact: mailto:a@example.com",
        );
        write("root/docs/.htpasswd", "SECRET PASSWORD");
        std::fs::create_dir_all(base.join("root/inside")).unwrap();
        let root = base.join("root");
        symlink(base.join("outside/secret.txt"), root.join("secret.txt")).unwrap();
        symlink(base.join("outside"), root.join("out")).unwrap();
        // Links that stay under the root are fine.
        symlink(root.join("app.js"), root.join("inside/app.js")).unwrap();
        symlink(root.join(".env"), root.join("config.txt")).unwrap();
        symlink(root.join("app.js"), root.join(".link.js")).unwrap();
        Tree { base }
    }

    fn root(&self) -> PathBuf {
        self.base.join("root")
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

async fn start(root: PathBuf, upstream: Option<SocketAddr>) -> Running {
    let mut settings = server::Settings::new(config().build().unwrap());
    settings.root_path = Some(root);
    settings.upstream = upstream.map(|up| format!("http://{up}").parse().unwrap());
    Running::start(false, |listener, _, stop| {
        server::run(listener, settings, stop)
    })
    .await
}

/// Requests for what must not be served.
const HIDDEN: &[&str] = &[
    "/.env",
    "/%2eenv",
    "/.git/config",
    "/.git/",
    "/.git",
    "/docs/.htpasswd",
    "/.link.js",
    "/config.txt",
    "/secret.txt",
    "/out/secret.txt",
    "/out/",
    "/out",
];

#[tokio::test]
async fn dotfiles_and_links_out_of_the_root_are_not_served() {
    let tree = Tree::new();
    let srv = start(tree.root(), None).await;
    for target in HIDDEN {
        let (status, body) = get_as_is(srv.addr, target).await;
        assert_eq!((status, body.as_str()), (404, "Not Found"), "{target}");
    }
    for (target, text) in [
        ("/", "home"),
        ("/app.js", "let x = 1;"),
        ("/inside/app.js", "let x = 1;"),
        ("/.well-known/security.txt", "Contact: mailto:a@example.com"),
    ] {
        assert_eq!(
            get_as_is(srv.addr, target).await,
            (200, text.to_owned()),
            "{target}"
        );
    }
}

#[tokio::test]
async fn what_static_files_do_not_serve_goes_on_to_the_upstream() {
    let tree = Tree::new();
    let up = start_upstream().await;
    let srv = start(tree.root(), Some(up)).await;
    for target in HIDDEN {
        let (status, body) = get_as_is(srv.addr, target).await;
        assert_eq!(status, 200, "{target}");
        assert!(!body.contains("SECRET"), "{target}: {body}");
        assert!(
            body.contains(r#""path":"#),
            "{target}: not the upstream's: {body}"
        );
    }
}
