import ArgumentParser
import EventSourcing
import Foundation

/// `esctl projections`: each tracking name (projection or process application) with its
/// position and its lag behind the store's notification log.
struct Projections: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Projections' tracking positions and their lag behind the notification log.",
        discussion: """
            Lists every tracking name the store records (each projection or process application
            that keeps its position in this store), with its position (the last notification id
            it processed) and its lag: the store's last notification id minus the position, the
            most notifications it still has to look at (events of topics it does not read count
            too). A follower of another store's log shows no lag (null in JSON) when its position
            is past this log's end. Needs no master key: it reads no ciphertext; a SQLite store is
            opened read-only. Exit 0 also when no name is recorded (an empty list).
            """)

    @OptionGroup(title: "Global options") var global: GlobalOptions
    @Flag(help: "Print JSON (stable: see Docs/Operations.md).") var json = false

    struct Row: Encodable, Equatable {
        var name: String
        var position: Int64
        /// Nil when the position is past the log's end (a follower of another log).
        var lag: Int64?
    }

    struct Report: Encodable {
        var store: String
        var maxNotificationID: Int64
        var projections: [Row]

        enum CodingKeys: String, CodingKey {
            case store, projections
            case maxNotificationID = "max_notification_id"
        }

        // Encodes `lag` as null rather than leaving the key out.
        func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(store, forKey: .store)
            try c.encode(maxNotificationID, forKey: .maxNotificationID)
            try c.encode(projections.map(RowJSON.init), forKey: .projections)
        }
    }

    private struct RowJSON: Encodable {
        var row: Row
        init(_ row: Row) { self.row = row }
        enum CodingKeys: String, CodingKey { case name, position, lag }
        func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(row.name, forKey: .name)
            try c.encode(row.position, forKey: .position)
            try c.encode(row.lag, forKey: .lag)
        }
    }

    /// The report for `store`: its positions, page by page, against its last notification id.
    static func report(_ store: any AdminStore) async throws -> Report {
        // The log's end first: a position recorded after it reads as no lag, never a negative one.
        let last = try await store.maxNotificationID() ?? 0
        var rows: [Row] = []
        var after: String?
        while true {
            let page = try await store.trackingPositions(after: after, limit: 1000)
            guard let end = page.last else { break }
            if let after, !Tracking.precedes(after, end.name) {
                throw EventSourcingError(.databaseCorrupt, "the store's tracking names came back out of order")
            }
            for t in page {
                let (lag, overflow) = last.subtractingReportingOverflow(t.notificationID)
                rows.append(Row(name: t.name, position: t.notificationID, lag: overflow || lag < 0 ? nil : lag))
            }
            after = end.name
        }
        return Report(store: store.location, maxNotificationID: last, projections: rows)
    }

    func run() async throws {
        try await Esctl.guarded {
            let store = try await StoreAccess(options: global).openStore(readOnly: true)
            let report: Report
            do { report = try await Self.report(store) } catch {
                await store.close()
                throw error
            }
            await store.close()
            if json {
                try JSONOut.print(report)
                return
            }
            guard !report.projections.isEmpty else {
                Terminal.info("no tracking positions in \(report.store) (no projection has recorded one); the log's last notification id is \(report.maxNotificationID)")
                return
            }
            let names = report.projections.map { Self.printable($0.name) }
            let width = min(max(names.map(\.count).max() ?? 0, "projection".count), 64)
            func pad(_ s: String, _ n: Int, left: Bool = false) -> String {
                let fill = String(repeating: " ", count: max(0, n - s.count))
                return left ? fill + s : s + fill
            }
            var out = pad("projection", width) + "  " + pad("position", 12, left: true) + "  " + pad("lag", 12, left: true) + "\n"
            for (row, name) in zip(report.projections, names) {
                out += pad(name, width) + "  " + pad("\(row.position)", 12, left: true) + "  "
                    + pad(row.lag.map { "\($0)" } ?? "-", 12, left: true) + "\n"
            }
            FileHandle.standardOutput.write(Data(out.utf8))
            let count = report.projections.count
            Terminal.info("\(count) tracking position\(count == 1 ? "" : "s"); the log's last notification id is \(report.maxNotificationID)")
        }
    }

    /// A name as it can be shown on a terminal: control and format characters (which a name
    /// written outside the library could hold, say an escape sequence) as `\u{…}` escapes.
    static func printable(_ name: String) -> String {
        var out = ""
        for scalar in name.unicodeScalars {
            switch scalar.properties.generalCategory {
            case .control, .format, .lineSeparator, .paragraphSeparator, .surrogate, .privateUse, .unassigned:
                out += "\\u{" + String(scalar.value, radix: 16) + "}"
            default:
                if scalar == "\\" { out += "\\\\" } else { out.unicodeScalars.append(scalar) }
            }
        }
        return out
    }
}
