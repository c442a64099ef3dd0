//! Every way out of an allowed folder that a user-named path could take is refused, and what is
//! allowed lands beneath the folder with the modes the crate promises.

use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cairn_confine::{AllowedFolders, ConfineError, validate_root};
use proptest::prelude::*;

struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
    data: PathBuf,
}

/// `T/restore` (allowed, 0755), `T/outside` (not allowed), `T/restore/data` (protected).
fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().canonicalize().unwrap();
    let root = base.join("restore");
    let outside = base.join("outside");
    let data = root.join("data");
    for d in [&root, &outside, &data] {
        std::fs::create_dir(d).unwrap();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
    Setup {
        _tmp: tmp,
        root,
        outside,
        data,
    }
}

fn allowed(s: &Setup) -> AllowedFolders {
    AllowedFolders::new([s.root.clone()]).protect(&s.data)
}

fn real_path(file: &std::fs::File) -> PathBuf {
    std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).unwrap()
}

#[test]
fn a_file_beneath_the_folder_is_created_0600_and_never_twice() {
    let s = setup();
    let a = allowed(&s);
    let path = s.root.join("web01.raw");
    let f = a.create_file(&path, 0o600).unwrap();
    assert_eq!(f.path, path);
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o600);
    assert_eq!(real_path(&f.file), path);
    let err = a.create_file(&path, 0o600).unwrap_err();
    assert!(matches!(err, ConfineError::Exists { .. }), "{err}");
    assert!(err.to_string().contains("already exists"), "{err}");
    assert!(a.check_new_file(&path).unwrap_err().is_exists());
    f.remove().unwrap();
    assert!(!path.exists());
    a.check_new_file(&path).unwrap();
}

#[test]
fn a_mode_asked_for_is_kept_whatever_the_umask_and_set_id_bits_are_refused() {
    let s = setup();
    let a = allowed(&s);
    let f = a.create_file(&s.root.join("shared.raw"), 0o640).unwrap();
    assert_eq!(f.file.metadata().unwrap().mode() & 0o7777, 0o640);
    for bad in [0o4755, 0o2700, 0o1600, 0o10000] {
        let err = a.create_file(&s.root.join("bad.raw"), bad).unwrap_err();
        assert!(matches!(err, ConfineError::Mode { .. }), "{bad:o}: {err}");
    }
    assert!(!s.root.join("bad.raw").exists());
}

/// Whether an error is the one a case expects.
type IsExpected = fn(&ConfineError) -> bool;

#[test]
fn relative_dotdot_outside_and_root_paths_are_refused_by_their_text() {
    let s = setup();
    let a = allowed(&s);
    let cases: Vec<(PathBuf, IsExpected)> = vec![
        (PathBuf::from("restore/x.raw"), |e| {
            matches!(e, ConfineError::NotAbsolute { .. })
        }),
        (s.root.join("../outside/x.raw"), |e| {
            matches!(e, ConfineError::DotDot { .. })
        }),
        (s.root.join("a/../../outside/x"), |e| {
            matches!(e, ConfineError::DotDot { .. })
        }),
        (s.root.join(".."), |e| matches!(e, ConfineError::DotDot { .. })),
        (s.outside.join("x.raw"), |e| {
            matches!(e, ConfineError::NotAllowed { .. })
        }),
        (PathBuf::from("/etc/cron.d/x"), |e| {
            matches!(e, ConfineError::NotAllowed { .. })
        }),
        (PathBuf::from("/dev/shm/x"), |e| {
            matches!(e, ConfineError::NotAllowed { .. })
        }),
        (s.root.clone(), |e| matches!(e, ConfineError::IsRoot { .. })),
        // A folder whose name merely starts like the root's is not beneath it.
        (PathBuf::from(format!("{}x/y", s.root.display())), |e| {
            matches!(e, ConfineError::NotAllowed { .. })
        }),
    ];
    for (path, expected) in cases {
        let err = a.create_file(&path, 0o600).unwrap_err();
        assert!(expected(&err), "{}: {err}", path.display());
        assert!(err.is_refusal());
    }
    assert_eq!(std::fs::read_dir(&s.outside).unwrap().count(), 0);
    // No folders at all: nothing is allowed, and the message says so.
    let none = AllowedFolders::default();
    let err = none.create_file(&s.root.join("x"), 0o600).unwrap_err();
    assert!(err.to_string().contains("none are configured"), "{err}");
}

#[test]
fn symlinks_below_the_folder_are_never_followed() {
    let s = setup();
    let a = allowed(&s);
    std::fs::create_dir(s.root.join("sub")).unwrap();
    symlink(&s.outside, s.root.join("out")).unwrap();
    symlink("sub", s.root.join("inner")).unwrap();
    symlink("/etc", s.root.join("etc")).unwrap();
    std::fs::write(s.outside.join("victim"), b"keep").unwrap();
    symlink(s.outside.join("victim"), s.root.join("victim-link")).unwrap();
    symlink(s.outside.join("new"), s.root.join("dangling")).unwrap();

    for (name, want_symlink) in [
        ("out/x.raw", true),
        ("inner/x.raw", true),
        ("etc/cron.d/x", true),
        ("victim-link", false),
        ("dangling", false),
    ] {
        let path = s.root.join(name);
        let err = a.create_file(&path, 0o600).unwrap_err();
        if want_symlink {
            assert!(matches!(err, ConfineError::Symlink { .. }), "{name}: {err}");
            assert!(err.to_string().contains("symbolic link"), "{err}");
        } else {
            // A final component that is a link counts as an existing entry: never written through.
            assert!(matches!(err, ConfineError::Exists { .. }), "{name}: {err}");
        }
    }
    assert_eq!(std::fs::read(s.outside.join("victim")).unwrap(), b"keep");
    assert!(!s.outside.join("new").exists());
    assert!(!s.outside.join("x.raw").exists());
    assert!(a.create_folder(&s.root.join("out/deeper")).is_err());
    assert!(!s.outside.join("deeper").exists());
}

#[test]
fn the_protected_folder_is_refused_by_any_route() {
    let s = setup();
    let a = allowed(&s);
    std::fs::create_dir(s.data.join("secrets")).unwrap();
    for name in ["data/x", "data/secrets/x", "./data/secrets/y"] {
        let err = a.create_file(&s.root.join(name), 0o600).unwrap_err();
        assert!(matches!(err, ConfineError::Protected { .. }), "{name}: {err}");
    }
    assert!(a.create_folder(&s.data.join("new")).is_err());
    assert!(!s.data.join("new").exists());
    assert_eq!(std::fs::read_dir(s.data.join("secrets")).unwrap().count(), 0);

    // An allowed folder inside the protected one, or equal to it, is refused as a whole.
    let inside = AllowedFolders::new([s.data.join("secrets")]).protect(&s.data);
    let err = inside.create_file(&s.data.join("secrets/x"), 0o600).unwrap_err();
    assert!(matches!(err, ConfineError::Protected { .. }), "{err}");
    let same = AllowedFolders::new([s.data.clone()]).protect(&s.data);
    assert!(same.create_file(&s.data.join("x"), 0o600).is_err());
    assert!(validate_root(&s.data.join("secrets"), std::slice::from_ref(&s.data)).is_err());
    assert!(validate_root(&s.data, std::slice::from_ref(&s.data)).is_err());
    assert_eq!(
        validate_root(&s.root.join("./"), std::slice::from_ref(&s.data)).unwrap(),
        s.root
    );
    // A protected folder reached through another name (a symlinked allowed folder) is still it.
    let alias = s.outside.join("alias");
    symlink(&s.data, &alias).unwrap();
    let aliased = AllowedFolders::new([alias.clone()]).protect(&s.data);
    let err = aliased.create_file(&alias.join("x"), 0o600).unwrap_err();
    assert!(matches!(err, ConfineError::Protected { .. }), "{err}");
}

#[test]
fn folders_others_may_write_are_refused_unless_sticky() {
    let s = setup();
    let a = allowed(&s);
    let open = s.root.join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = a.create_file(&open.join("x"), 0o600).unwrap_err();
    assert!(matches!(err, ConfineError::Writable { .. }), "{err}");
    assert!(err.to_string().contains("writable by other users"), "{err}");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
    a.create_file(&open.join("x"), 0o600).unwrap();
    // The allowed folder itself is checked too.
    std::fs::set_permissions(&s.root, std::fs::Permissions::from_mode(0o757)).unwrap();
    assert!(matches!(
        a.create_file(&s.root.join("y"), 0o600).unwrap_err(),
        ConfineError::Writable { .. }
    ));
    assert!(validate_root(&s.root, &[]).is_err());
}

#[test]
fn missing_folders_are_named_and_created_only_when_asked() {
    let s = setup();
    let a = allowed(&s);
    let path = s.root.join("vm/disks/disk0.qcow2");
    let err = a.create_file(&path, 0o600).unwrap_err();
    match &err {
        ConfineError::NoFolder { folder, .. } => assert_eq!(folder, &s.root.join("vm")),
        other => panic!("{other}"),
    }
    let dir = a.create_folder(&s.root.join("vm/disks")).unwrap();
    assert_eq!(dir.path(), s.root.join("vm/disks"));
    for d in ["vm", "vm/disks"] {
        assert_eq!(std::fs::metadata(s.root.join(d)).unwrap().mode() & 0o7777, 0o700, "{d}");
    }
    let f = dir.create_file(std::ffi::OsStr::new("disk0.qcow2"), 0o600).unwrap();
    assert_eq!(real_path(&f.file), path);
    assert!(dir.create_file(std::ffi::OsStr::new("../x"), 0o600).is_err());
    // Existing folders are opened as they are; a file in the way is not a folder.
    a.create_folder(&s.root.join("vm")).unwrap();
    std::fs::write(s.root.join("plain"), b"").unwrap();
    assert!(matches!(
        a.create_file(&s.root.join("plain/x"), 0o600).unwrap_err(),
        ConfineError::NotAFolder { .. }
    ));
    // Renames stay inside the folder.
    let tmp = dir.create_file(std::ffi::OsStr::new("disk0.qcow2.new"), 0o600).unwrap();
    drop(tmp);
    dir.rename("disk0.qcow2.new".as_ref(), "disk0.qcow2".as_ref()).unwrap();
    assert!(!dir.contains("disk0.qcow2.new".as_ref()).unwrap());
    assert!(dir.contains("disk0.qcow2".as_ref()).unwrap());
}

#[test]
fn a_folder_swapped_for_a_symlink_while_files_are_created_never_lets_one_out() {
    let s = setup();
    let a = allowed(&s);
    let swapped = s.root.join("a");
    let real = s.root.join("a-real");
    std::fs::create_dir(&real).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (stop, swapped, real, outside) = (stop.clone(), swapped.clone(), real.clone(), s.outside.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = std::fs::remove_file(&swapped);
                let _ = std::os::unix::fs::symlink(&real, &swapped);
                let _ = std::fs::remove_file(&swapped);
                let _ = std::os::unix::fs::symlink(&outside, &swapped);
                let _ = std::fs::remove_file(&swapped);
                let _ = std::fs::create_dir(&swapped);
                let _ = std::fs::remove_dir(&swapped);
            }
        })
    };
    let mut created = 0;
    let mut i = 0;
    // At least 3000 tries, and on until 20 of them got a real folder (bounded).
    while (i < 3000 || created < 20) && i < 200_000 {
        i += 1;
        if let Ok(f) = a.create_file(&swapped.join(format!("f{i}")), 0o600) {
            assert!(
                real_path(&f.file).starts_with(&s.root),
                "{}",
                real_path(&f.file).display()
            );
            created += 1;
            let _ = f.remove();
        }
    }
    stop.store(true, Ordering::Relaxed);
    swapper.join().unwrap();
    assert_eq!(
        std::fs::read_dir(&s.outside).unwrap().count(),
        0,
        "a file escaped ({created} created beneath)"
    );
    assert!(
        created > 0,
        "the race never let a file be created: the test tried nothing"
    );
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("..".to_string()),
        Just(".".to_string()),
        Just("out".to_string()),
        Just("inner".to_string()),
        Just("data".to_string()),
        Just("sub".to_string()),
        Just("".to_string()),
        "[a-z]{1,3}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    /// Whatever path is asked for, a file is only ever made beneath the allowed folder and
    /// outside the protected one, at the path the request named.
    #[test]
    fn files_only_ever_land_beneath_the_folder(segments in prop::collection::vec(segment(), 1..6)) {
        let s = setup();
        std::fs::create_dir(s.root.join("sub")).unwrap();
        symlink(&s.outside, s.root.join("out")).unwrap();
        symlink("sub", s.root.join("inner")).unwrap();
        let a = allowed(&s);
        let asked = Path::new(&s.root).join(segments.join("/"));
        let made = a.create_folder(asked.parent().unwrap_or(&s.root))
            .and_then(|_| a.create_file(&asked, 0o600));
        if let Ok(f) = made {
            let real = real_path(&f.file);
            prop_assert!(real.starts_with(&s.root), "{}", real.display());
            prop_assert!(!real.starts_with(&s.data), "{}", real.display());
            prop_assert_eq!(real, cairn_confine::normalize(&asked).unwrap());
        }
        prop_assert_eq!(std::fs::read_dir(&s.outside).unwrap().count(), 0);
    }
}
