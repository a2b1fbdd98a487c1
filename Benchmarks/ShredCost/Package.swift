// swift-tools-version:6.0
// How long a SQLite shred takes as the store grows, in a package of its own (it needs only the
// library, so it builds offline and quickly). A measurement to run, not a test:
//
//   swift run -c release --package-path Benchmarks/ShredCost shred-cost --scopes 60000 [--shreds 20] [--dir DIR]
//
// It prints one JSON line. Benchmarks/shred-cost.sh builds it and runs it at several sizes.
import Foundation
import PackageDescription

// The parent package's identity is its directory name, whatever the clone is called.
let parent = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().lastPathComponent

let package = Package(
    name: "ShredCost",
    platforms: [.macOS(.v15)],
    dependencies: [.package(path: "../..")],
    targets: [
        .executableTarget(
            name: "shred-cost",
            dependencies: [
                .product(name: "EventSourcingSQLite", package: parent),
                .product(name: "KeyManagement", package: parent),
            ],
            path: "Sources"
        ),
    ],
    swiftLanguageModes: [.v6]
)
