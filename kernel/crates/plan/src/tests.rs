use super::*;
use proptest::prelude::*;

const K: u64 = 1 << 10;
const M: u64 = 1 << 20;
const G: u64 = 1 << 30;

fn parts(text: &str) -> Vec<(u32, Option<u64>)> {
    PlanSpec::parse(text)
        .unwrap()
        .partitions()
        .iter()
        .map(|p| (p.cpus, p.memory))
        .collect()
}

fn err(text: &str) -> ParseError {
    PlanSpec::parse(text).unwrap_err()
}

#[test]
fn parse_good() {
    assert_eq!(parts("2,2,4"), [(2, None), (2, None), (4, None)]);
    assert_eq!(
        parts("2:256M,2:256M,4"),
        [(2, Some(256 * M)), (2, Some(256 * M)), (4, None)]
    );
    assert_eq!(parts(" 1 : 1g , 3 \n"), [(1, Some(G)), (3, None)]);
    assert_eq!(
        parts("1:4096,1:8k,1:2T"),
        [(1, Some(4096)), (1, Some(8 * K)), (1, Some(2 << 40))]
    );
    assert_eq!(parts("4294967295"), [(u32::MAX, None)]);
    assert_eq!(parts("007:0010M"), [(7, Some(10 * M))]);
    assert_eq!(
        PlanSpec::parse(&["1"; MAX_INSTANCES].join(","))
            .unwrap()
            .partitions()
            .len(),
        16
    );
    assert_eq!("3".parse::<PlanSpec>().unwrap().total_cpus(), 3);
}

#[test]
fn parse_errors() {
    use ParseError::*;
    assert_eq!(err(""), Empty);
    assert_eq!(err(" \n\t"), Empty);
    assert_eq!(err("2,,4"), EmptyPartition { pos: 2 });
    assert_eq!(err("0"), EmptyPartition { pos: 0 });
    assert_eq!(err("2, 0:4M"), EmptyPartition { pos: 3 });
    assert_eq!(err("2,"), EmptyPartition { pos: 2 });
    assert_eq!(err(",2"), EmptyPartition { pos: 0 });
    assert_eq!(err("a"), BadNumber { pos: 0 });
    assert_eq!(err("2x"), BadNumber { pos: 1 });
    assert_eq!(err("2 3"), BadNumber { pos: 1 });
    assert_eq!(err(":256M"), BadNumber { pos: 0 });
    assert_eq!(err("-1"), BadNumber { pos: 0 });
    assert_eq!(err("1,+1"), BadNumber { pos: 2 });
    assert_eq!(err("4294967296"), BadNumber { pos: 0 });
    assert_eq!(err("99999999999999999999999"), BadNumber { pos: 0 });
    assert_eq!(err("2:"), BadSize { pos: 2 });
    assert_eq!(err("2: ,1"), BadSize { pos: 2 });
    assert_eq!(err("2:M"), BadSize { pos: 2 });
    assert_eq!(err("2:256X"), BadSize { pos: 5 });
    assert_eq!(err("2:256MB"), BadSize { pos: 5 });
    assert_eq!(err("2:1:2"), BadSize { pos: 3 });
    assert_eq!(err("2:0"), BadSize { pos: 2 });
    assert_eq!(err("2:0G"), BadSize { pos: 2 });
    assert_eq!(err("2:99999999999G"), BadSize { pos: 2 });
    assert_eq!(err("2:100"), UnalignedSize { pos: 2 });
    assert_eq!(err("2:1K"), UnalignedSize { pos: 2 });
    assert_eq!(err(&["1"; MAX_INSTANCES + 1].join(",")), TooManyPartitions);
    // Non-ASCII input: positions are byte offsets, no panic on char boundaries.
    assert_eq!(err("2:é"), BadSize { pos: 2 });
    assert_eq!(err("é"), BadNumber { pos: 0 });
}

#[test]
fn display_round_trips() {
    for (text, canonical) in [
        ("2,2,4", "2,2,4"),
        ("2:256M,2:256M,4", "2:256M,2:256M,4"),
        (" 1 : 1024m , 3 ", "1:1G,3"),
        ("1:4096", "1:4K"),
        ("1:12288,2:3145728", "1:12K,2:3M"),
        ("1:1T", "1:1T"),
    ] {
        let spec = PlanSpec::parse(text).unwrap();
        assert_eq!(spec.to_string(), canonical);
        assert_eq!(PlanSpec::parse(canonical).unwrap(), spec);
    }
    assert_eq!(Size(0).to_string(), "0");
    assert_eq!(Size(1536 * M).to_string(), "1536M");
}

#[test]
fn default_plans() {
    let d = |n| PlanSpec::default_for(n).to_string();
    assert_eq!(d(0), "1");
    assert_eq!(d(1), "1");
    assert_eq!(d(4), "1,1,1,1");
    assert_eq!(d(16), ["1"; 16].join(","));
    assert_eq!(d(17), format!("2,{}", ["1"; 15].join(",")));
    assert_eq!(d(40), format!("3,3,3,3,3,3,3,3,{}", ["2"; 8].join(",")));
    assert_eq!(PlanSpec::default_for(40).total_cpus(), 40);
    assert_eq!(
        PlanSpec::default_for(u32::MAX).total_cpus(),
        u64::from(u32::MAX)
    );
    assert_eq!(PlanSpec::default(), PlanSpec::parse("1").unwrap());
}

// ---- resolve ----

/// Something like QEMU's map with the bootloader's allocations cut out (1 GiB machine).
fn qemu_map() -> Vec<MemRange> {
    vec![
        MemRange::new(0x1000, 0x9e000),           // low memory, below the EBDA
        MemRange::new(0x10_0000, 0x70_0000),      // 1 MiB .. 8 MiB
        MemRange::new(0x100_0000, 0x3efe_0000),   // 16 MiB .. ~1 GiB
        MemRange::new(0x80_0000 + 0x123, 0x1000), // unaligned sliver: dropped
    ]
}

fn resolve(spec: &str, cpus: &[u32], mem: &[MemRange], shared: u64) -> Result<Plan, PlanError> {
    PlanSpec::parse(spec)
        .unwrap()
        .resolve(cpus, mem.iter().copied(), shared)
}

fn sum(r: &[MemRange]) -> u64 {
    r.iter().map(|r| r.len).sum()
}

#[test]
fn resolve_example() {
    let cpus = [0, 1, 2, 3, 4, 5, 6, 7];
    let plan = resolve("2:256M,2:256M,4", &cpus, &qemu_map(), 2 * M).unwrap();
    assert_eq!(plan.partition_count(), 3);
    let p: Vec<_> = plan.partitions().collect();
    assert_eq!(p[0].cpus, [0, 1]);
    assert_eq!(p[1].cpus, [2, 3]);
    assert_eq!(p[2].cpus, [4, 5, 6, 7]);
    assert!(plan.parked_cpus().is_empty());
    assert_eq!(p[0].bytes, 256 * M);
    assert_eq!(p[1].bytes, 256 * M);
    // Partition 0 starts with the lowest page.
    assert_eq!(p[0].memory[0], MemRange::new(0x1000, 0x9e000));
    assert_eq!(p[0].memory[1], MemRange::new(0x10_0000, 0x70_0000));
    assert_eq!(sum(p[0].memory), 256 * M);
    assert_eq!(p[1].memory.len(), 1);
    // Shared region at the top of the highest range, 2 MiB aligned.
    let shared = plan.shared().unwrap();
    assert_eq!(shared, MemRange::new(0x3fe0_0000 - 2 * M, 2 * M));
    let usable = 0x9e000 + 0x70_0000 + 0x3efe_0000;
    assert_eq!(plan.usable_bytes(), usable);
    // Unsized partition: the rest rounded down to 2 MiB, remainder unassigned.
    let rest = usable - 512 * M - 2 * M;
    assert_eq!(p[2].bytes, rest & !(2 * M - 1));
    assert_eq!(sum(plan.unassigned()), rest % (2 * M));
    assert_eq!(
        sum(p[0].memory)
            + sum(p[1].memory)
            + sum(p[2].memory)
            + shared.len
            + sum(plan.unassigned()),
        usable
    );
    assert_eq!(plan.partition_of_cpu(0), Some(0));
    assert_eq!(plan.partition_of_cpu(5), Some(2));
    assert_eq!(plan.partition_of_cpu(8), None);
    let text = plan.to_string();
    assert!(
        text.starts_with("instance 0: cpus [0, 1], 256M in 0x1000..0x9f000 0x100000..0x800000"),
        "{text}"
    );
}

#[test]
fn fewer_cpus_than_exist_are_parked() {
    let cpus = [10, 3, 7, 12];
    let plan = resolve("1,2", &cpus, &qemu_map(), 0).unwrap();
    assert_eq!(plan.partition(0).unwrap().cpus, [10]);
    assert_eq!(plan.partition(1).unwrap().cpus, [3, 7]);
    assert!(plan.partition(2).is_none());
    assert_eq!(plan.parked_cpus(), [12]);
    assert_eq!(plan.partition_of_cpu(12), None);
    assert_eq!(plan.shared(), None);
    // Even split of everything, 2 MiB granules.
    let a = plan.partition(0).unwrap().bytes;
    assert_eq!(a, plan.partition(1).unwrap().bytes);
    assert_eq!(a % (2 * M), 0);
    assert!(plan.usable_bytes() - 2 * a < 4 * M);
}

#[test]
fn cpu_errors() {
    let mem = qemu_map();
    assert_eq!(
        resolve("2,2,4", &[0, 1, 2, 3, 4, 5, 6], &mem, 0).unwrap_err(),
        PlanError::MoreCpusThanExist { asked: 8, have: 7 }
    );
    assert_eq!(resolve("1", &[], &mem, 0).unwrap_err(), PlanError::NoCpus);
    assert_eq!(
        resolve("1", &[0, 1, 0], &mem, 0).unwrap_err(),
        PlanError::DuplicateCpu { apic_id: 0 }
    );
    let many: Vec<u32> = (0..MAX_CPUS as u32 + 1).collect();
    assert_eq!(
        resolve("1", &many, &mem, 0).unwrap_err(),
        PlanError::TooManyCpus {
            have: MAX_CPUS + 1,
            max: MAX_CPUS
        }
    );
    let max: Vec<u32> = (0..MAX_CPUS as u32).collect();
    assert_eq!(
        resolve("4294967295", &max, &mem, 0).unwrap_err(),
        PlanError::MoreCpusThanExist {
            asked: u64::from(u32::MAX),
            have: MAX_CPUS as u64
        }
    );
    let sixteen_max = ["4294967295"; 16].join(",");
    assert_eq!(
        resolve(&sixteen_max, &max, &mem, 0).unwrap_err(),
        PlanError::MoreCpusThanExist {
            asked: 16 * u64::from(u32::MAX),
            have: MAX_CPUS as u64
        }
    );
}

#[test]
fn memory_errors() {
    let mem = [MemRange::new(0, 64 * M)];
    assert_eq!(
        resolve("1:64M", &[0], &mem, 0)
            .unwrap()
            .partition(0)
            .unwrap()
            .bytes,
        64 * M
    );
    assert_eq!(
        resolve("1:64M", &[0], &mem, 1).unwrap_err(),
        PlanError::MoreMemoryThanExists {
            asked: 64 * M,
            have: 62 * M
        }
    );
    assert_eq!(
        resolve("1:32M,1:40M", &[0, 1], &mem, 0).unwrap_err(),
        PlanError::MoreMemoryThanExists {
            asked: 72 * M,
            have: 64 * M
        }
    );
    let huge = ["1:16383P"; 16].join(",");
    // 'P' is not a unit: sizes beyond T are written in T.
    assert!(PlanSpec::parse(&huge).is_err());
    let huge = ["1:16000000T"; 16].join(",");
    let cpus: Vec<u32> = (0..16).collect();
    assert_eq!(
        resolve(&huge, &cpus, &mem, 0).unwrap_err(),
        PlanError::MoreMemoryThanExists {
            asked: u64::MAX,
            have: 64 * M
        }
    );
    assert_eq!(
        resolve("1:63M,1", &[0, 1], &mem, 0).unwrap_err(),
        PlanError::NoMemoryForPartition {
            partition: 1,
            left: M
        }
    );
    assert_eq!(
        resolve("1", &[0], &[], 0).unwrap_err(),
        PlanError::NoMemoryForPartition {
            partition: 0,
            left: 0
        }
    );
    assert_eq!(
        resolve("1", &[0], &mem, 65 * M).unwrap_err(),
        PlanError::SharedRegionDoesNotFit { bytes: 66 * M }
    );
    assert_eq!(
        resolve("1", &[0], &mem, u64::MAX).unwrap_err(),
        PlanError::SharedRegionDoesNotFit { bytes: u64::MAX }
    );
    // Plenty of memory, but no 2 MiB-aligned 2 MiB block.
    let holes = [MemRange::new(M, 2 * M), MemRange::new(4 * M - 4 * K, 2 * M)];
    assert_eq!(
        resolve("1", &[0], &holes, 1).unwrap_err(),
        PlanError::SharedRegionDoesNotFit { bytes: 2 * M }
    );
    // Shared region takes the whole memory: nothing left for the partition.
    assert_eq!(
        resolve("1", &[0], &mem, 64 * M).unwrap_err(),
        PlanError::NoMemoryForPartition {
            partition: 0,
            left: 0
        }
    );
}

#[test]
fn too_many_or_fragmented_ranges() {
    // MAX_MEMORY_RANGES separate ranges are fine, one more is not.
    let many: Vec<MemRange> = (0..MAX_MEMORY_RANGES as u64 + 1)
        .map(|i| MemRange::new(i * 4 * M, 2 * M))
        .collect();
    assert_eq!(
        resolve("1", &[0], &many, 0).unwrap_err(),
        PlanError::TooManyMemoryRanges {
            max: MAX_MEMORY_RANGES
        }
    );
    // ... unless they merge: touching and overlapping ranges count once.
    // (The limit applies while merging in the given order: here the bridging ranges come first.)
    let mut merging: Vec<MemRange> = (0..MAX_MEMORY_RANGES as u64)
        .map(|i| MemRange::new(i * 4 * M + M, 3 * M))
        .collect();
    merging.extend_from_slice(&many);
    let plan = resolve("1", &[0], &merging, 0).unwrap();
    assert_eq!(
        plan.partition(0).unwrap().memory,
        [MemRange::new(0, (MAX_MEMORY_RANGES as u64 * 4 + 2) * M)]
    );
    // One partition spanning more than MAX_PARTITION_RANGES ranges.
    let frag = &many[..MAX_MEMORY_RANGES];
    assert_eq!(
        resolve("1", &[0], frag, 0).unwrap_err(),
        PlanError::TooFragmented { partition: 0 }
    );
    let ok = resolve("1:32M,1:32M,1:32M,1:32M", &[0, 1, 2, 3], frag, 0).unwrap();
    assert!(ok.partitions().all(|p| p.memory.len() == 16));
    assert_eq!(sum(ok.unassigned()), 0);
}

#[test]
fn unsorted_overlapping_unaligned_input() {
    let mem = [
        MemRange::new(0x20_0800, 0x10_0000), // -> 0x201000..0x300000 after merge? merged first
        MemRange::new(0x10_0000, 0x10_0900), // 0x100000..0x200900, touches nothing aligned
        MemRange::new(0x30_0000, 0),         // empty
        MemRange::new(u64::MAX - 0x1800, 0x10000), // saturates at u64::MAX, trimmed to pages
        MemRange::new(u64::MAX - 10, 5),     // cannot be rounded up to a page: dropped
    ];
    let plan = resolve("1", &[0], &mem, 0).unwrap();
    // 0x100000..0x200900 and 0x200800..0x300800 overlap: merged to 0x100000..0x300800 ->
    // 0x100000..0x300000; the top one becomes [u64::MAX-0x1800 rounded up, u64::MAX & !0xfff) = empty.
    assert_eq!(plan.usable_bytes(), 0x20_0000);
    assert_eq!(
        plan.partition(0).unwrap().memory,
        [MemRange::new(0x10_0000, 0x20_0000)]
    );
}

// ---- property tests ----

/// Independent model: merge, then trim to pages.
fn model_pool(mem: &[MemRange]) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = mem
        .iter()
        .filter(|r| r.len > 0)
        .map(|r| (r.start, r.end()))
        .collect();
    v.sort();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (s, e) in v {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    merged
        .into_iter()
        .map(|(s, e)| (s.div_ceil(PAGE_SIZE) * PAGE_SIZE, e / PAGE_SIZE * PAGE_SIZE))
        .filter(|(s, e)| s < e)
        .collect()
}

/// Random memory maps: a few large ranges, or many small ones (fragmented), some unaligned,
/// some overlapping or touching, in any order.
fn mem_map() -> impl Strategy<Value = Vec<MemRange>> {
    let range = |max_len: u64| {
        (
            0..4 * G / PAGE_SIZE,
            0..(max_len / PAGE_SIZE),
            any::<bool>(),
            0..PAGE_SIZE,
        )
            .prop_map(|(page, pages, unaligned, off)| {
                let (start, len) = (page * PAGE_SIZE, pages * PAGE_SIZE);
                if unaligned {
                    MemRange::new(start + off, len)
                } else {
                    MemRange::new(start, len)
                }
            })
    };
    prop_oneof![
        prop::collection::vec(range(256 * M), 0..24),
        prop::collection::vec(range(8 * M), 0..60),
    ]
}

fn spec() -> impl Strategy<Value = PlanSpec> {
    let part = (1..4u32, prop::option::of(1..(128 * M / PAGE_SIZE))).prop_map(|(cpus, pages)| {
        PartitionSpec {
            cpus,
            memory: pages.map(|p| p * PAGE_SIZE),
            node: None,
        }
    });
    prop::collection::vec(part, 1..=MAX_INSTANCES).prop_map(|v| {
        let mut s = PlanSpec::EMPTY;
        s.parts[..v.len()].copy_from_slice(&v);
        s.len = v.len();
        s
    })
}

fn check_plan(spec: &PlanSpec, cpus: &[u32], mem: &[MemRange], shared_bytes: u64, plan: &Plan) {
    let pool = model_pool(mem);
    let usable: u64 = pool.iter().map(|(s, e)| e - s).sum();
    assert_eq!(plan.usable_bytes(), usable);

    // CPUs: consecutive, in order, rest parked.
    let mut next = 0;
    for (p, want) in plan.partitions().zip(spec.partitions()) {
        assert_eq!(p.cpus, &cpus[next..next + want.cpus as usize]);
        for &c in p.cpus {
            assert_eq!(plan.partition_of_cpu(c), Some(p.index));
        }
        next += want.cpus as usize;
    }
    assert_eq!(plan.partition_count(), spec.partitions().len());
    assert_eq!(plan.parked_cpus(), &cpus[next..]);

    // Every range: page aligned, non-empty, inside one usable range; no two overlap.
    let mut all: Vec<MemRange> = Vec::new();
    for p in plan.partitions() {
        assert_eq!(sum(p.memory), p.bytes);
        assert!(p.memory.len() <= MAX_PARTITION_RANGES);
        all.extend_from_slice(p.memory);
    }
    let shared_len = plan.shared().map_or(0, |s| s.len);
    match plan.shared() {
        Some(s) => {
            assert!(shared_bytes > 0);
            assert_eq!(s.start % LARGE_PAGE_SIZE, 0);
            assert_eq!(s.len, shared_bytes.next_multiple_of(LARGE_PAGE_SIZE));
            all.push(s);
        }
        None => assert_eq!(shared_bytes, 0),
    }
    all.extend_from_slice(plan.unassigned());
    for r in &all {
        assert!(r.len > 0);
        assert_eq!(r.start % PAGE_SIZE, 0);
        assert_eq!(r.len % PAGE_SIZE, 0);
        assert!(
            pool.iter().any(|&(s, e)| s <= r.start && r.end() <= e),
            "{r:?} outside usable memory"
        );
    }
    all.sort_by_key(|r| r.start);
    for w in all.windows(2) {
        assert!(w[0].end() <= w[1].start, "{:?} overlaps {:?}", w[0], w[1]);
    }
    // Accounting: partitions + shared + unassigned == usable.
    assert_eq!(sum(&all), usable);

    // Sizes: sized exact, unsized equal 2 MiB multiples, leftover < one granule each.
    let sized: u64 = spec.partitions().iter().filter_map(|p| p.memory).sum();
    let unsized_n = spec
        .partitions()
        .iter()
        .filter(|p| p.memory.is_none())
        .count() as u64;
    let mut share = None;
    for (p, want) in plan.partitions().zip(spec.partitions()) {
        match want.memory {
            Some(b) => assert_eq!(p.bytes, b),
            None => {
                assert_eq!(p.bytes % LARGE_PAGE_SIZE, 0);
                assert!(share.is_none_or(|s| s == p.bytes));
                share = Some(p.bytes);
            }
        }
    }
    let left = sum(plan.unassigned());
    if unsized_n > 0 {
        assert!(left < unsized_n * LARGE_PAGE_SIZE);
    } else {
        assert_eq!(left, usable - shared_len - sized);
    }
    // Placement is from the bottom: partition ranges ascend through the instances.
    let mut last = 0;
    for p in plan.partitions() {
        for r in p.memory {
            assert!(r.start >= last);
            last = r.end();
        }
    }
}

fn check_error(spec: &PlanSpec, cpus: &[u32], mem: &[MemRange], shared_bytes: u64, e: PlanError) {
    let pool = model_pool(mem);
    let usable: u64 = pool.iter().map(|(s, e)| e - s).sum();
    let shared_len = shared_bytes.next_multiple_of(LARGE_PAGE_SIZE);
    let sized: u64 = spec.partitions().iter().filter_map(|p| p.memory).sum();
    let unsized_n = spec
        .partitions()
        .iter()
        .filter(|p| p.memory.is_none())
        .count() as u64;
    match e {
        PlanError::MoreCpusThanExist { asked, have } => {
            assert_eq!(asked, spec.total_cpus());
            assert_eq!(have, cpus.len() as u64);
            assert!(asked > have);
        }
        PlanError::SharedRegionDoesNotFit { bytes } => {
            assert_eq!(bytes, shared_len);
            let fits = pool
                .iter()
                .any(|&(s, e)| s.next_multiple_of(LARGE_PAGE_SIZE) + shared_len <= e);
            assert!(!fits);
        }
        PlanError::MoreMemoryThanExists { asked, have } => {
            assert_eq!(asked, sized);
            assert_eq!(have, usable - if shared_bytes > 0 { shared_len } else { 0 });
            assert!(asked > have);
        }
        PlanError::NoMemoryForPartition { left, .. } => {
            assert!(unsized_n > 0);
            assert!(left / unsized_n < LARGE_PAGE_SIZE);
        }
        PlanError::TooFragmented { .. } => assert!(pool.len() + 1 > MAX_PARTITION_RANGES),
        other => panic!("unexpected {other:?}"),
    }
    if !matches!(e, PlanError::MoreCpusThanExist { .. }) {
        assert!(
            spec.total_cpus() <= cpus.len() as u64,
            "CPU check comes first"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn parse_never_panics(s in ".{0,40}") {
        if let Ok(spec) = PlanSpec::parse(&s) {
            prop_assert_eq!(PlanSpec::parse(&spec.to_string()), Ok(spec));
        }
    }

    #[test]
    fn parse_never_panics_on_plan_like_text(s in "[0-9,:KMGTkmgtB \\n-]{0,40}") {
        if let Ok(spec) = PlanSpec::parse(&s) {
            prop_assert!(!spec.partitions().is_empty() && spec.partitions().len() <= MAX_INSTANCES);
            prop_assert!(spec.partitions().iter().all(|p| p.cpus > 0));
            prop_assert!(spec.partitions().iter().all(|p| p.memory.is_none_or(|m| m > 0 && m % PAGE_SIZE == 0)));
            prop_assert_eq!(PlanSpec::parse(&spec.to_string()), Ok(spec));
        }
    }

    #[test]
    fn display_parse_round_trip(spec in spec()) {
        let text = spec.to_string();
        prop_assert_eq!(PlanSpec::parse(&text), Ok(spec));
        prop_assert_eq!(PlanSpec::parse(&text).unwrap().to_string(), text);
    }

    #[test]
    fn resolve_accounting(
        spec in spec(),
        extra_cpus in -2i64..4,
        mem in mem_map(),
        shared in prop_oneof![Just(0u64), 1..8 * M, Just(2 * M)],
    ) {
        // Around the number of CPUs asked for: too few, exact, or some left parked.
        let cpu_count = (spec.total_cpus() as i64 + extra_cpus).max(1) as usize;
        // Unique, shuffled-looking APIC ids.
        let cpus: Vec<u32> = (0..cpu_count as u32).map(|i| (i * 7 + 3) % 61).collect();
        match spec.resolve(&cpus, mem.iter().copied(), shared) {
            Ok(plan) => check_plan(&spec, &cpus, &mem, shared, &plan),
            Err(e) => check_error(&spec, &cpus, &mem, shared, e),
        }
    }

    #[test]
    fn default_plan_resolves(cpu_count in 1..64u32, mem in mem_map()) {
        let spec = PlanSpec::default_for(cpu_count);
        prop_assert_eq!(spec.total_cpus(), u64::from(cpu_count));
        let cpus: Vec<u32> = (0..cpu_count).collect();
        match spec.resolve(&cpus, mem.iter().copied(), 0) {
            Ok(plan) => {
                check_plan(&spec, &cpus, &mem, 0, &plan);
                prop_assert!(plan.parked_cpus().is_empty());
            }
            Err(e) => check_error(&spec, &cpus, &mem, 0, e),
        }
    }
}

#[test]
fn node_syntax_parses_and_round_trips() {
    let spec = PlanSpec::parse("2@0, 1:1G @ 1,1").unwrap();
    let p = spec.partitions();
    assert_eq!((p[0].cpus, p[0].memory, p[0].node), (2, None, Some(0)));
    assert_eq!(
        (p[1].cpus, p[1].memory, p[1].node),
        (1, Some(1 << 30), Some(1))
    );
    assert_eq!(p[2].node, None);
    assert_eq!(spec.to_string(), "2@0,1:1G@1,1");
    assert_eq!(PlanSpec::parse(&spec.to_string()), Ok(spec));
}

#[test]
fn node_syntax_errors_name_the_offset() {
    for (text, pos) in [
        ("2@", 2),
        ("2@x", 2),
        ("1,2@1x", 5),
        ("1@64", 2),
        ("1@99999999999", 2),
        ("1:1G@", 5),
    ] {
        assert_eq!(
            PlanSpec::parse(text),
            Err(ParseError::BadNode { pos }),
            "{text}"
        );
    }
    // The size's own errors still come first in its part.
    assert_eq!(
        PlanSpec::parse("1:1X@0"),
        Err(ParseError::BadSize { pos: 3 })
    );
}

/// Two nodes: node 0 is [1 MiB, 1 GiB) and CPUs 0-1, node 1 is [1 GiB, 2 GiB) and CPUs 2-3.
type TwoNodes = (Vec<MemRange>, [(u32, u32); 4], [(MemRange, u32); 2]);

fn two_nodes() -> TwoNodes {
    let usable = vec![MemRange::new(0x10_0000, (2 << 30) - 0x10_0000)];
    let cpus = [(0, 0), (1, 0), (2, 1), (3, 1)];
    let mem = [
        (MemRange::new(0, 1 << 30), 0),
        (MemRange::new(1 << 30, 1 << 30), 1),
    ];
    (usable, cpus, mem)
}

#[test]
fn default_plan_puts_memory_on_the_cpus_node() {
    let (usable, cpus, mem) = two_nodes();
    let numa = Numa {
        cpus: &cpus,
        memory: &mem,
    };
    // CPUs in an order that interleaves the nodes: placement must follow the CPUs.
    let apic = [0, 2, 1, 3];
    let plan = PlanSpec::default_for(4)
        .resolve_numa(&apic, usable.iter().copied(), 2 << 20, &numa)
        .unwrap();
    assert_eq!(plan.nodes(), 2);
    for p in plan.partitions() {
        let node = numa.node_of_cpu(p.cpus[0]);
        assert_eq!(p.node, node);
        for r in p.memory {
            assert_eq!(numa.node_of_address(r.start), Some(node), "{plan}");
            assert_eq!(numa.node_of_address(r.end() - 1), Some(node), "{plan}");
        }
    }
}

#[test]
fn named_nodes_are_honoured_or_refused() {
    let (usable, cpus, mem) = two_nodes();
    let numa = Numa {
        cpus: &cpus,
        memory: &mem,
    };
    let apic = [0, 1, 2, 3];
    // Both instances' memory on node 1, though instance 0's CPUs are on node 0.
    let plan = PlanSpec::parse("2:256M@1,2:256M@1")
        .unwrap()
        .resolve_numa(&apic, usable.iter().copied(), 2 << 20, &numa)
        .unwrap();
    for p in plan.partitions() {
        assert_eq!(p.node, 1);
        assert!(p.memory.iter().all(|r| r.start >= 1 << 30), "{plan}");
    }
    let too_big = PlanSpec::parse("2:1G@0,2").unwrap();
    assert_eq!(
        too_big
            .resolve_numa(&apic, usable.iter().copied(), 2 << 20, &numa)
            .err(),
        Some(PlanError::NodeTooSmall {
            partition: 0,
            node: 0
        })
    );
    let missing = PlanSpec::parse("2,2@5").unwrap();
    assert_eq!(
        missing
            .resolve_numa(&apic, usable.iter().copied(), 2 << 20, &numa)
            .err(),
        Some(PlanError::NoSuchNode {
            partition: 1,
            node: 5
        })
    );
}

#[test]
fn plan_is_small_enough_for_a_kernel_stack() {
    // Resolved on the bootstrap CPU's stack: keep it well under 16 KiB.
    assert!(
        core::mem::size_of::<Plan>() <= 8 * 1024,
        "{}",
        core::mem::size_of::<Plan>()
    );
    // 16 partitions of (CPUs, size, node).
    assert!(core::mem::size_of::<PlanSpec>() <= 640);
}
