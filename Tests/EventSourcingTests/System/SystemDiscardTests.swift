import ESTestSupport
import EventSourcing
import Foundation
import Testing

/// A policy that keeps one invoice per order (under an id derived from the order's) and
/// discards it when the order is noted "cancel": with the cancel in the same event as the
/// placement (events and discard collected together), or later (a discard alone).
private struct CancellingPolicy: ProcessPolicy {
    var topics: [String] { ["SysOrder.placed", "SysOrder.noted"] }

    static func invoiceID(_ order: UUID) throws -> UUID { try DerivedID.uuid(namespace: "invoice", id: order) }

    func process(_ event: UpstreamEvent, in context: ProcessingContext) async throws {
        guard let e = try event.event(if: SysOrder.self) else { return }
        let id = try Self.invoiceID(e.originatorID)
        switch e.event {
        case .placed(let customer, let item, let amount):
            var invoice = try AggregateRoot<SysInvoice>(id: id, .issued(orderID: e.originatorID, customer: customer, item: item,
                                                                        amount: amount, leader: event.leader,
                                                                        notificationID: event.notificationID))
            if item == "cancel at once" { try invoice.discard() }   // events and the discard in one collect
            try context.collect(&invoice)
            if item == "cancel at once" {
                // The context answers as the repository will once committed.
                #expect(try await context.contains(id) == false)
                let e = await #expect(throws: EventSourcingError.self) { try await context.get(SysInvoice.self, id: id) }
                #expect(e?.code == .aggregateNotFound)
            }
        case .noted("cancel"):
            var invoice = try await context.get(SysInvoice.self, id: id)
            try invoice.discard()                                    // a discard alone
            try context.collect(&invoice)
        case .noted:
            break
        }
    }
}

@Suite("System: a process application's discards")
struct SystemDiscardTests {
    @Test("A discard collected by a policy is committed: alone, or with the events in one collect; the repository then says not found, the history stays",
          arguments: RecorderFactory.all)
    func discardsAreCommitted(_ factory: RecorderFactory) async throws {
        try await SystemFixture.with(factory, names: ["orders", "invoices"]) { f in
            let orders = try f.app("orders")
            var kept = try AggregateRoot<SysOrder>(.placed(customer: "customer-a", item: "book", amount: 3))
            var later = try AggregateRoot<SysOrder>(.placed(customer: "customer-b", item: "lamp", amount: 5))
            var atOnce = try AggregateRoot<SysOrder>(.placed(customer: "customer-a", item: "cancel at once", amount: 7))
            try await orders.save(&kept)
            try await orders.save(&later)
            try await orders.save(&atOnce)
            try later.record(.noted("cancel"))
            let last = try #require(try await orders.save(&later).last?.notificationID)

            let process = try ProcessApplication(name: "invoices", application: try f.app("invoices"), policy: CancellingPolicy())
            let system = try System(members: [.application("orders", orders), .process(process)], pipes: [["orders", "invoices"]])
            try await runUntil(try SystemRunner(system: system), [("invoices", "orders", last)])

            let invoices = try f.app("invoices")
            #expect(try await invoices.repository.contains(try CancellingPolicy.invoiceID(kept.id)))
            #expect(try await invoices.repository.get(SysInvoice.self, id: try CancellingPolicy.invoiceID(kept.id)).amount == 3)
            for (order, discardVersion) in [(later.id, 2), (atOnce.id, 2)] {
                let id = try CancellingPolicy.invoiceID(order)
                #expect(try await invoices.repository.contains(id) == false, "the discard marker was committed")
                let e = await #expect(throws: EventSourcingError.self) { try await invoices.repository.get(SysInvoice.self, id: id) }
                #expect(e?.code == .aggregateNotFound)
                #expect(e?.originatorVersion == discardVersion)
                // The history stays readable below the marker.
                #expect(try await invoices.repository.get(SysInvoice.self, id: id, version: 1).version == 1)
            }
        }
    }
}
