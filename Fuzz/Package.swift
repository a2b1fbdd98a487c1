// swift-tools-version:6.0
// libFuzzer targets for the library's parsers. A package of its own, so the library's build
// and CI never compile them; built only by Fuzz/run.sh with the fuzzer and address sanitizer:
//
//   Fuzz/run.sh                 # every target for 60 s on its corpus
//   Fuzz/run.sh compact 300     # one target for 300 s
//
// See Fuzz/README.md.
import Foundation
import PackageDescription

// The parent package's identity is its directory name, whatever the clone is called.
let parent = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().lastPathComponent

func fuzzTarget(_ name: String, _ deps: [Target.Dependency]) -> Target {
    .executableTarget(name: name, dependencies: ["FuzzSupport"] + deps, path: "Sources/\(name)")
}

let package = Package(
    name: "Fuzz",
    platforms: [.macOS(.v15)],
    dependencies: [.package(path: "..")],
    targets: [
        .target(name: "CFuzzer", path: "Sources/CFuzzer"),
        .target(name: "FuzzSupport",
                dependencies: ["CFuzzer",
                               .product(name: "EventSourcing", package: parent),
                               .product(name: "KeyManagement", package: parent)],
                path: "Sources/FuzzSupport"),
        fuzzTarget("fuzz-state-header", [.product(name: "EventSourcing", package: parent)]),
        fuzzTarget("fuzz-mapper", [.product(name: "EventSourcing", package: parent),
                                   .product(name: "KeyManagement", package: parent)]),
        fuzzTarget("fuzz-compact", [.product(name: "EventSourcing", package: parent)]),
        fuzzTarget("fuzz-key-file", [.product(name: "KeyManagement", package: parent)]),
        fuzzTarget("fuzz-store-file", [.product(name: "EventSourcing", package: parent),
                                       .product(name: "EventSourcingSQLite", package: parent),
                                       .product(name: "KeyManagement", package: parent)]),
        fuzzTarget("fuzz-pkcs11-uri", [.product(name: "KeyManagement", package: parent)]),
    ],
    swiftLanguageModes: [.v6]
)
