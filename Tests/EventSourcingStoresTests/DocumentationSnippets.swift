import Configuration
import EventSourcing
import EventSourcingStores
import Foundation
import KeyManagement
import Logging
import ServiceLifecycle
import UnixSignals

// The snippets of the getting-started article's "Opening a store" section, compiled here so
// the article cannot drift from the API (they are not run: they read the process's
// environment and files it names).
enum DocumentationSnippets {
    static func openWithTheFactory(databasePath: String, keyPath: String) async throws -> EncryptedStore {
        let store = try await EncryptedStore.open(url: "sqlite:" + databasePath,
                                                  masterKey: try MasterKey(contentsOfFile: keyPath),
                                                  options: .init(snapshotIntervals: [.every(100, for: Account.self)]))
        return store
    }

    static func openFromTheEnvironment() async throws -> EncryptedStore {
        try await EncryptedStore.open(EncryptedStore.Configuration(environment: ProcessInfo.processInfo.environment))
    }

    static func openFromConfiguration() async throws -> EncryptedStore {
        // The environment first, then the JSON file that CONFIG_FILE_PATH names.
        let environment = EnvironmentVariablesProvider()
        let file = try await FileProvider<JSONSnapshot>(config: ConfigReader(provider: environment).scoped(to: "config"))
        let config = ConfigReader(providers: [environment, file])
        return try await EncryptedStore.open(EncryptedStore.Configuration(config: config))
    }

    static func runAsService(store: EncryptedStore, server: any Service) async throws {
        let group = ServiceGroup(services: [store, server], gracefulShutdownSignals: [.sigterm],
                                 logger: Logger(label: "shop"))
        try await group.run()
    }
}
