import EventSourcing
@testable import OrderSystem
import Foundation
import Synchronization
import Testing

/// The runnable system example (`swift run OrderSystem`) runs here, in a temporary directory.
@Suite("Examples: order system")
struct OrderSystemExampleTests {
    static func tempDirectory() throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("es-order-system-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        return dir
    }

    /// Checks how every order ended: the same whatever the crash point.
    static func checkResults(_ r: [OrderSystemExample.OrderResult], exactSteps: Bool) {
        let fulfilled = ["started", "paymentRequested", "paid", "shipmentRequested", "shipped", "completed"]
        for i in [0, 3, 4] {
            #expect(r[i].status == .fulfilled, "order \(i)")
            #expect(r[i].payment == .charged && r[i].paymentEvents == 1, "order \(i): one charge, no refund")
            #expect(r[i].shipped == true)
            if exactSteps { #expect(r[i].sagaSteps == fulfilled, "order \(i): \(r[i].sagaSteps)") }
        }
        // Declined: cancelled, never shipped.
        #expect(r[1].status == .cancelled && r[1].cancellation == "payment declined")
        #expect(r[1].payment == .declined && r[1].paymentEvents == 1)
        #expect(r[1].shipped == nil)
        if exactSteps { #expect(r[1].sagaSteps == ["started", "paymentRequested", "declined", "cancelled"]) }
        // Shipment failed: refunded once, then cancelled.
        #expect(r[2].status == .cancelled && r[2].cancellation == "shipment failed; payment refunded")
        #expect(r[2].payment == .refunded && r[2].paymentEvents == 2)
        #expect(r[2].shipped == false)
        if exactSteps {
            #expect(r[2].sagaSteps == ["started", "paymentRequested", "paid", "shipmentRequested", "shipmentFailed",
                                       "refundRequested", "refunded", "cancelled"])
        }
        // Whatever the order the outcomes arrived in: no step twice, and one ending.
        for (i, o) in r.enumerated() {
            #expect(Set(o.sagaSteps).count == o.sagaSteps.count, "order \(i): a step twice: \(o.sagaSteps)")
            #expect(o.sagaSteps.filter { $0 == "completed" || $0 == "cancelled" }.count == 1, "order \(i): \(o.sagaSteps)")
        }
    }

    @Test("Every order ends once as its story says (fulfilled, declined and cancelled, shipment failed then refunded and cancelled) across a crash and restart; no double payment or refund; one shred erases the customer in every application")
    func story() async throws {
        let dir = try Self.tempDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let printed = Mutex<[String]>([])
        let outcome = try await OrderSystemExample.run(in: dir.appendingPathComponent("run")) { line in
            printed.withLock { $0.append(line) }
        }
        let r = outcome.results
        try #require(r.count == OrderSystemExample.placements.count)
        Self.checkResults(r, exactSteps: true)

        // The crash hit the first charged payment (Ada's first order), after the shipping
        // command; the restart finished it once (its saga steps and payment above).
        #expect(outcome.crashedOrder == r[0].order)
        #expect(outcome.crashError.code == .processFailed)
        #expect(outcome.crashError.message.contains("fulfilment"))

        // The shred of Ada reached every application; the others' records are intact.
        #expect(outcome.erasedCustomerID == r[0].customerID)
        for app in ["orders", "payments", "shipping", "fulfilment"] {
            #expect(outcome.erasedReads[app] == [.shredded, .shredded], "\(app): \(outcome.erasedReads[app] ?? [])")
        }
        #expect(outcome.intactReads == ["orders": 3, "payments": 3, "shipping": 2, "fulfilment": 3])
        #expect(outcome.erasuresReceived.contains(outcome.erasedCustomerID))

        let text = printed.withLock { $0 }.joined(separator: "\n")
        #expect(text.contains("crashed"))
        #expect(text.contains("Erasure request from Ada Lovelace"))

        // No name, address or item is in any file in plaintext: every record is encrypted.
        let files = try FileManager.default.contentsOfDirectory(atPath: dir.appendingPathComponent("run").path)
        #expect(files.contains("orders.sqlite") && files.contains("keys.sqlite"))
        for file in files {
            guard let bytes = FileManager.default.contents(atPath: dir.appendingPathComponent("run").appendingPathComponent(file).path) else { continue }
            for p in OrderSystemExample.placements {
                for value in [p.customer, p.address, p.item] {
                    #expect(bytes.range(of: Data(value.utf8)) == nil, "\(value) is in \(file) in plaintext")
                }
            }
        }
    }

    @Test("A crash after the saga's command and before its commit, at each kind of event the saga acts on: the restart finishes every order exactly once (a command's effect may now arrive before its cause)",
          arguments: OrderSystemExample.crashPoints)
    func crashAnywhere(_ crashAt: String) async throws {
        let dir = try Self.tempDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let outcome = try await OrderSystemExample.run(in: dir, crashAt: crashAt) { _ in }
        #expect(outcome.crashError.code == .processFailed)
        #expect(outcome.crashError.topic == crashAt || outcome.crashError.message.contains(crashAt))
        try #require(outcome.results.count == OrderSystemExample.placements.count)
        Self.checkResults(outcome.results, exactSteps: false)
        for app in ["orders", "payments", "shipping", "fulfilment"] {
            #expect(outcome.erasedReads[app] == [.shredded, .shredded], "\(app)")
        }
    }

    @Test("A crash point the saga never reaches is refused before anything is written")
    func unknownCrashPoint() async throws {
        let dir = try Self.tempDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let e = await #expect(throws: EventSourcingError.self) {
            _ = try await OrderSystemExample.run(in: dir.appendingPathComponent("run"), crashAt: "Order.fulfilled") { _ in }
        }
        #expect(e?.code == .invalidArgument)
        #expect(!FileManager.default.fileExists(atPath: dir.appendingPathComponent("run").path))
    }

    @Test("A directory that already holds the example's stores is refused, and its files are left as they were")
    func refusesExistingStores() async throws {
        let dir = try Self.tempDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        _ = try await OrderSystemExample.run(in: dir) { _ in }
        let path = dir.appendingPathComponent("orders.sqlite").path
        let bytes = FileManager.default.contents(atPath: path)
        await #expect(throws: EventSourcingError.self) { _ = try await OrderSystemExample.run(in: dir) { _ in } }
        #expect(FileManager.default.contents(atPath: path) == bytes)
    }
}
