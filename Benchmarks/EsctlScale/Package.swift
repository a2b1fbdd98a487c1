// swift-tools-version:6.0
// The store generator for Benchmarks/esctl-scale.sh, in a package of its own: it needs only the
// library (no benchmark framework), so the script builds it offline. It opens SQLite and
// PostgreSQL stores through EventSourcingStores (so it builds postgres-nio, as esctl does).
//
//   swift build -c release --package-path Benchmarks/EsctlScale --product esctl-scale-seed
import Foundation
import PackageDescription

// The parent package's identity is its directory name, whatever the clone is called.
let parent = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().lastPathComponent

let package = Package(
    name: "EsctlScale",
    platforms: [.macOS(.v15)],
    dependencies: [.package(path: "../..")],
    targets: [
        .executableTarget(
            name: "esctl-scale-seed",
            dependencies: [
                .product(name: "EventSourcing", package: parent),
                .product(name: "EventSourcingSQLite", package: parent),
                .product(name: "EventSourcingStores", package: parent),
                .product(name: "KeyManagement", package: parent),
            ],
            path: "Sources"
        ),
    ],
    swiftLanguageModes: [.v6]
)
