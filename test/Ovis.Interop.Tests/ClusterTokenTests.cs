using System.Net;
using System.Net.Http.Headers;
using System.Text;
using Ovis.Cluster.Tests.Infrastructure;
using Ovis.Interop.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Ovis.Interop.Tests;

/// <summary>Every node of a cluster accepts the cluster's one admin token, kept in etcd by the first node to start.</summary>
public sealed class ClusterTokenTests(EtcdCluster etcd, ITestOutputHelper output)
    : ClusterTest(etcd, output), IClassFixture<EtcdCluster>
{
    [Fact]
    public async Task Every_node_accepts_the_token_the_first_one_stored_in_etcd()
    {
        await using var nodes = await StartCluster(copies: 2, nodes: 2);
        var token = nodes[0].Token;
        Assert.False(string.IsNullOrEmpty(token));
        Assert.Equal(token, nodes[1].Token);

        // A token from the first node's directory changes state on the second.
        using var http = new HttpClient { BaseAddress = new Uri(nodes[1].AdminUrl + "/"), Timeout = TimeSpan.FromSeconds(15) };
        using var request = new HttpRequestMessage(HttpMethod.Post, new Uri("api/v1/volumes", UriKind.Relative))
        {
            Content = new StringContent("""{"name":"shared","size":16777216}""", Encoding.UTF8, "application/json"),
        };
        request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", token);
        using var created = await http.SendAsync(request);
        Assert.Equal(HttpStatusCode.Created, created.StatusCode);

        using var refused = await http.DeleteAsync(new Uri("api/v1/volumes/shared", UriKind.Relative));
        Assert.Equal(HttpStatusCode.Unauthorized, refused.StatusCode);
    }
}
