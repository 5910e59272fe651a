using System.Runtime.CompilerServices;

[assembly: InternalsVisibleTo("Ovis.Store.Tests")]
