using Ovis.Cluster.Recovery;
using Ovis.Store;

namespace Ovis.Cluster.Tests;

/// <summary>Client requests and recovery work taking turns on objects.</summary>
public sealed class ObjectGateTests
{
    private static readonly TimeSpan T = TimeSpan.FromSeconds(10);

    [Fact]
    public async Task A_client_touching_a_queued_object_runs_its_work_first_and_only_once()
    {
        var gate = new ObjectGate();
        var id = new ObjectId(1, 1);
        int runs = 0;
        int firstRuns = 0;
        Assert.True(gate.Queue(id, _ =>
        {
            Interlocked.Increment(ref firstRuns);
            return Task.FromResult(true);
        }, urgentForReads: true));
        // Queued again before it started: one run, of the newest work (a recovery that replaced
        // the one that queued it first has the right view of the object).
        Assert.False(gate.Queue(id, async _ =>
        {
            Interlocked.Increment(ref runs);
            await Task.Delay(50);
            return true;
        }, urgentForReads: true));

        // Nobody called RunAsync: the clients start the work themselves, and share it.
        var clients = Enumerable.Range(0, 8).Select(_ => gate.EnterAsync(id, forWrite: false).AsTask()).ToArray();
        Assert.All(await Task.WhenAll(clients).WaitAsync(T), Assert.True);
        Assert.Equal(1, runs);
        Assert.Equal(0, firstRuns);
        Assert.False(gate.IsPending(id));
        for (int i = 0; i < clients.Length; i++)
            gate.Leave(id);

        // Another object is not held up at all: entered synchronously.
#pragma warning disable CA2012 // Consumed once, here: only whether it completed at once is looked at.
        Assert.True(gate.EnterAsync(new ObjectId(1, 2), forWrite: false).IsCompletedSuccessfully);
#pragma warning restore CA2012
        gate.Leave(new ObjectId(1, 2));
    }

    [Fact]
    public async Task Work_asked_for_while_it_runs_runs_again_before_a_reader_gets_in()
    {
        // A node taken out while the scrub compared an object: the object had new holders, and
        // its queueing was swallowed by the running scrub, so the new holder's empty copy was read.
        var gate = new ObjectGate();
        var id = new ObjectId(3, 0);
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var order = new List<string>();
        Assert.True(gate.Queue(id, async _ =>
        {
            started.SetResult();
            await release.Task;
            lock (order)
                order.Add("first");
            return true;
        }, urgentForReads: false));
        var first = gate.RunAsync(id);
        await started.Task.WaitAsync(T);

        Assert.False(gate.Queue(id, _ =>
        {
            lock (order)
                order.Add("again");
            return Task.FromResult(true);
        }, urgentForReads: true));
        var reader = gate.EnterAsync(id, forWrite: false).AsTask();
        await Task.Delay(50);
        Assert.False(reader.IsCompleted); // running work holds every request off
        release.SetResult();
        Assert.True(await first.WaitAsync(T));
        Assert.True(await reader.WaitAsync(T));
        lock (order)
            Assert.Equal(["first", "again"], order);
        Assert.False(gate.IsPending(id));
        gate.Leave(id);
    }

    [Fact]
    public async Task A_request_inside_that_steps_out_and_in_again_comes_back_behind_the_work_queued_meanwhile()
    {
        // A read inside the gate refreshed to a new placement whose move was queued after it
        // entered: the move waits for it, so the read must not use the new placement from inside.
        var gate = new ObjectGate();
        var id = new ObjectId(5, 0);
        Assert.True(await gate.EnterAsync(id, forWrite: false));
        bool moved = false;
        gate.Queue(id, async _ =>
        {
            await Task.Delay(20);
            moved = true;
            return true;
        }, urgentForReads: true);
        var work = gate.RunAsync(id); // waits for the request inside
        Assert.True(await gate.ReenterAsync(id, forWrite: false).AsTask().WaitAsync(T));
        Assert.True(moved);
        Assert.True(await work.WaitAsync(T));
        gate.Leave(id);

        // Work that fails: still inside once (the caller's one Leave balances), and told so.
        Assert.True(await gate.EnterAsync(id, forWrite: false));
        gate.Queue(id, _ => Task.FromResult(false), urgentForReads: true);
        Assert.False(await gate.ReenterAsync(id, forWrite: false).AsTask().WaitAsync(T));
        gate.Leave(id);
        gate.Forget(_ => true);
#pragma warning disable CA2012 // Consumed once, here: only whether it completed at once is looked at.
        Assert.True(gate.EnterAsync(id, forWrite: false).IsCompletedSuccessfully); // nothing left inside or queued
#pragma warning restore CA2012
        gate.Leave(id);
    }

    [Fact]
    public async Task Work_waits_for_the_requests_inside_and_failed_work_fails_the_clients_and_stays_queued()
    {
        var gate = new ObjectGate();
        var id = new ObjectId(2, 0);
        Assert.True(await gate.EnterAsync(id, forWrite: false));
        bool clientInside = true;
        bool sawClient = false;
        gate.Queue(id, _ =>
        {
            sawClient = Volatile.Read(ref clientInside);
            return Task.FromResult(false);
        }, urgentForReads: true);
        var work = gate.RunAsync(id);
        await Task.Delay(100);
        Assert.False(work.IsCompleted); // the request inside holds it off
        Volatile.Write(ref clientInside, false);
        gate.Leave(id);
        Assert.False(await work.WaitAsync(T));
        Assert.False(sawClient);

        Assert.True(gate.IsPending(id));
        Assert.False(await gate.EnterAsync(id, forWrite: false).AsTask().WaitAsync(T));
    }

    [Fact]
    public async Task Queued_work_not_urgent_for_reads_lets_requests_in_and_waits_for_them()
    {
        var gate = new ObjectGate();
        var id = new ObjectId(4, 0);
        int runs = 0;
        gate.Queue(id, _ =>
        {
            Interlocked.Increment(ref runs);
            return Task.FromResult(true);
        }, urgentForReads: false);

        // A read and a write go in without running it (a read uses only current copies; a write
        // reaches every copy, so the later copy loses nothing)...
        Assert.True(await gate.EnterAsync(id, forWrite: false));
        Assert.True(await gate.EnterAsync(id, forWrite: true));
        Assert.Equal(0, runs);
        // ...and the work, once started, waits for both to leave.
        var work = gate.RunAsync(id);
        await Task.Delay(100);
        Assert.False(work.IsCompleted);
        gate.Leave(id);
        gate.Leave(id);
        Assert.True(await work.WaitAsync(T));
        Assert.Equal(1, runs);

        // A write never starts queued work, even urgent work; a read does.
        gate.Queue(id, _ => Task.FromResult(true), urgentForReads: true);
        Assert.True(await gate.EnterAsync(id, forWrite: true));
        Assert.True(gate.IsPending(id));
        gate.Leave(id);
        Assert.True(await gate.EnterAsync(id, forWrite: false).AsTask().WaitAsync(T));
        Assert.False(gate.IsPending(id));
        gate.Leave(id);
    }

    [Fact]
    public async Task A_shut_gate_holds_new_requests_until_it_opens()
    {
        var gate = new ObjectGate();
        var id = new ObjectId(3, 0);
        gate.Shut();
        var entering = gate.EnterAsync(id, forWrite: false).AsTask();
        await Task.Delay(50);
        Assert.False(entering.IsCompleted);
        gate.Open();
        Assert.True(await entering.WaitAsync(T));
        gate.Leave(id);
    }
}
